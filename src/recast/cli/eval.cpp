// recast eval --model DIR --data SPEC [--split test] [--json]
// Language models: loss, perplexity and bits per byte. Classifiers: accuracy,
// per-class accuracy and the confusion matrix.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/train/objectives.h"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace recast::cli {
namespace {

struct EvalCli {
  std::string model, data, split = "test", device = "cpu", text_field = "text";
  int64_t batch_size = 16, seq_len = 0, max_batches = 0;
  int64_t seed = -1;
  int threads = 0;
  bool json = false, bf16 = false;
};

void print_classifier(const train::EvalResult& r) {
  std::printf("accuracy %.4f  loss %.4f  (%lld examples)\n", r.accuracy, r.loss,
              static_cast<long long>(r.count));
  size_t width = 5;
  for (const auto& c : r.classes) width = std::max(width, c.size());
  std::printf("\n%-*s  accuracy\n", static_cast<int>(width), "class");
  for (size_t c = 0; c < r.classes.size(); ++c) {
    std::printf("%-*s  %.4f\n", static_cast<int>(width), r.classes[c].c_str(),
                r.per_class_accuracy[c]);
  }
  std::printf("\nconfusion (rows: true class, columns: predicted)\n");
  for (size_t t = 0; t < r.confusion.size(); ++t) {
    std::printf("%-*s", static_cast<int>(width), r.classes[t].c_str());
    for (auto n : r.confusion[t]) std::printf(" %6lld", static_cast<long long>(n));
    std::printf("\n");
  }
}

int run_eval(const EvalCli& o) {
  set_threads(o.threads);
  const c10::Device device = select_device(o.device);
  models::ModelPtr model = models::load_model(o.model);
  const nlohmann::json manifest = manifest_of(o.model);
  const train::DataKind kind = train::sniff_data_kind(o.data);
  const bool lm = model->task() == models::Task::CausalLM;
  if (lm != (kind == train::DataKind::Text)) {
    throw UsageError(msg("--model ", o.model, " is a ", lm ? "language model" : "classifier",
                         " but --data ", o.data, " is ", train::data_kind_name(kind), " data"));
  }
  std::unique_ptr<io::Tokenizer> tok;
  if (kind != train::DataKind::ImageClassification) {
    tok = tokenizer_of_checkpoint(o.model);
    if (!tok) throw Error(msg(o.model, ": no tokenizer files; text evaluation needs them"));
  }
  train::Normalization norm = normalization_of(model->config());
  train::DataOptions d;
  d.spec = o.data;
  d.split = o.split;
  d.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed)
                       : static_cast<uint64_t>(manifest_int(manifest, "seed", 0));
  d.seq_len = o.seq_len > 0 ? o.seq_len : manifest_int(manifest, "seq_len", 128);
  d.text_field = o.text_field;
  auto data = train::open_dataset(d, tok.get(), &norm);
  model->to(device);
  train::EvalOptions eo;
  eo.batch_size = o.batch_size;
  eo.max_batches = o.max_batches;
  eo.device = device;
  eo.bf16 = o.bf16;
  if (!o.json) log::info("evaluating on ", data->describe());
  const train::EvalResult r = train::evaluate(*model, *data, eo);
  if (o.json) {
    nlohmann::json j = r.to_json();
    j["model"] = o.model;
    j["data"] = o.data;
    j["split"] = o.split;
    std::cout << j.dump(2) << std::endl;
  } else if (lm) {
    std::printf("loss %.4f  perplexity %.3f  bits/byte %.4f  (%lld tokens)\n", r.loss,
                r.perplexity, r.bits_per_byte, static_cast<long long>(r.count));
  } else {
    print_classifier(r);
  }
  return 0;
}

}  // namespace

Runner add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCli>();
  auto* cmd = app.add_subcommand("eval", verb_info("eval").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory")->required();
  cmd->add_option("--data", o->data, "Named data set or path (as for pretrain)")->required();
  cmd->add_option("--split", o->split, "train, val, test or all (default test)");
  cmd->add_option("--batch-size", o->batch_size, "Examples per batch (default 16)");
  cmd->add_option("--seq-len", o->seq_len, "Window length (default: the model's training one)");
  cmd->add_option("--max-batches", o->max_batches, "Stop after N batches (default: all)");
  cmd->add_option("--seed", o->seed, "Split seed (default: the model's training seed)");
  cmd->add_option("--text-field", o->text_field, "JSON field holding the text (default text)");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_flag("--bf16", o->bf16, "bf16 autocast on CUDA");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)");
  cmd->add_flag("--json", o->json, "Print the metrics as JSON");
  return [o] { return run_eval(*o); };
}

}  // namespace recast::cli
