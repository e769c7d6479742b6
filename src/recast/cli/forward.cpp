// recast forward --model PATH --input IN.safetensors --output OUT.safetensors
//                [--dump REGEX] [--arch NAME] [--set key=value]... [--device D] [--dtype T]
// Runs a model on the inputs in IN (input_ids [+ attention_mask] for language
// models, + decoder_input_ids or labels (shifted right as transformers does)
// for encoder-decoders, pixel_values for vision models: the names
// transformers and timm use)
// and writes `logits` (float32) plus every intermediate whose name matches
// REGEX. The hook for comparing recast with other implementations.

#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/checkpoint.h"
#include "recast/models/model.h"
#include "recast/models/seq2seq.h"

#include <torch/torch.h>

#include <memory>
#include <set>

namespace recast::cli {
namespace {

struct ForwardOptions {
  std::string model, input, output, dump, arch, device = "cpu", dtype = "f32";
  std::vector<std::string> set;
  bool tf32 = false;
};

models::Batch read_batch(const std::string& path, const models::Model& model) {
  io::TensorStore store = io::TensorStore::open(path);
  const models::Task task = model.task();
  const bool seq2seq = task == models::Task::Seq2SeqLM;
  const bool text = task == models::Task::CausalLM || task == models::Task::SequenceClassification || seq2seq;
  std::set<std::string> known = text ? std::set<std::string>{"input_ids", "attention_mask"}
                                     : std::set<std::string>{"pixel_values"};
  if (seq2seq) known.insert({"decoder_input_ids", "labels"});
  const std::string takes =
      seq2seq ? "input_ids, attention_mask and decoder_input_ids or labels"
              : text ? "input_ids and attention_mask" : "pixel_values";
  for (const auto& e : store.entries()) {
    if (!known.count(e.info->name)) {
      throw Error(msg(path, ": unexpected tensor ", quote(e.info->name), " (a ", model.arch(),
                      " model takes ", takes, ")"));
    }
  }
  models::Batch batch;
  const char* required = text ? "input_ids" : "pixel_values";
  if (store.find(required) == nullptr) {
    throw Error(msg(path, ": no tensor '", required, "' (a ", model.arch(), " model takes ",
                    text ? "input_ids int64 [B, T]" : "pixel_values float32 [B, C, H, W]", ")"));
  }
  try {
    if (text) {
      batch.input_ids = store.tensor("input_ids", /*copy=*/true);
      if (store.find("attention_mask")) batch.attention_mask = store.tensor("attention_mask", true);
    } else {
      batch.pixel_values = store.tensor("pixel_values", true);
      RECAST_CHECK(batch.pixel_values.is_floating_point(),
                   "pixel_values: expected floating point, found ",
                   batch.pixel_values.scalar_type());
    }
    if (seq2seq) {
      const bool given = store.find("decoder_input_ids") != nullptr;
      const bool labels = store.find("labels") != nullptr;
      if (given == labels) {
        throw Error(msg("expected one of decoder_input_ids or labels (int64 [B, T_dec]), found ",
                        given ? "both" : "neither"));
      }
      if (given) {
        batch.decoder_input_ids = store.tensor("decoder_input_ids", true);
      } else {
        // As transformers does with labels: shifted right behind the start token.
        const auto& s2s = static_cast<const models::Seq2SeqModel&>(model);
        const at::Tensor l = store.tensor("labels", true);
        RECAST_CHECK(!l.is_floating_point() && l.scalar_type() != at::kBool,
                     "labels: expected integer token ids, found ", l.scalar_type());
        batch.decoder_input_ids =
            models::shift_right(l.to(at::kLong), s2s.decoder_start_token(), s2s.pad_token());
      }
    }
  } catch (const Error& e) {
    throw e.with_context(path);
  }
  return batch;
}

int run_forward(const ForwardOptions& o) {
  const c10::Device device = select_device(o.device);
  const c10::ScalarType dtype = parse_dtype(o.dtype);
  check_compute_dtype(dtype, device);
  set_tf32(o.tf32);
  std::unique_ptr<models::Recorder> recorder;
  if (!o.dump.empty()) recorder = std::make_unique<models::Recorder>(o.dump);
  models::ModelPtr model = models::load_model(o.model, {o.arch, o.set, true, dtype});
  models::Batch batch = read_batch(o.input, *model);
  model->to(device, dtype);
  if (batch.input_ids.defined()) batch.input_ids = batch.input_ids.to(device);
  if (batch.attention_mask.defined()) batch.attention_mask = batch.attention_mask.to(device);
  if (batch.decoder_input_ids.defined()) batch.decoder_input_ids = batch.decoder_input_ids.to(device);
  if (batch.pixel_values.defined()) batch.pixel_values = batch.pixel_values.to(device, dtype);
  torch::NoGradGuard no_grad;
  at::Tensor logits;
  try {
    logits = model->forward(batch, recorder.get());
  } catch (const Error& e) {
    throw e.with_context(o.input);
  }
  io::NamedTensors out = {{"logits", logits.to(at::kCPU, at::kFloat).contiguous()}};
  if (recorder) {
    for (const auto& t : recorder->tensors()) out.push_back(t);
  }
  io::save_safetensors(o.output, out, {{"format", "pt"}});
  log::info("wrote logits ", logits.sizes(),
            recorder ? msg(" and ", recorder->tensors().size(), " intermediates") : "", " to ",
            o.output);
  return 0;
}

}  // namespace

Runner add_forward(CLI::App& app) {
  auto o = std::make_shared<ForwardOptions>();
  auto* cmd = app.add_subcommand("forward", verb_info("forward").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory, or a .safetensors file with --arch")
      ->required();
  cmd->add_option("--input", o->input,
                  "safetensors file with input_ids [+ attention_mask] [+ decoder_input_ids or "
                  "labels] or pixel_values")
      ->required();
  cmd->add_option("--output", o->output, "safetensors file to write logits (+ intermediates) to")
      ->required();
  cmd->add_option("--dump", o->dump, "Also write intermediates whose names match this regex");
  cmd->add_option("--arch", o->arch,
                  "Architecture of a bare .safetensors file (see 'recast list')");
  cmd->add_option("--set", o->set, "Override a config value: key=value (JSON value); repeatable");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--dtype", o->dtype, "f32, bf16 or f16 (default f32)");
  cmd->add_flag("--tf32", o->tf32,
                "Let CUDA fp32 products and convolutions use TF32 (faster, ~1e-4 error)");
  return [o] { return run_forward(*o); };
}

}  // namespace recast::cli
