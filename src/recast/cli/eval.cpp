// recast eval --model DIR --data SPEC [--split test] [--json]
//             [--corrupt NAME[:SEVERITY]|all [--baseline DIR]]
// Language models: loss, perplexity and bits per byte. Classifiers: accuracy,
// per-class accuracy and the confusion matrix. With --corrupt (images): the
// accuracy under each corruption and severity (eval/corruptions.h), and with
// --baseline the corruption error of each corruption relative to the baseline
// model's, CE_c = sum_s err(model) / sum_s err(baseline), and their mean (mCE),
// as Hendrycks & Dietterich define it.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/eval/corruptions.h"
#include "recast/models/generate.h"
#include "recast/models/seq2seq.h"
#include "recast/train/data.h"
#include "recast/train/objectives.h"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace recast::cli {
namespace {

struct EvalCli {
  std::string model, data, split = "test", device = "cpu", text_field = "text", corrupt, baseline;
  int64_t batch_size = 16, seq_len = 0, max_batches = 0;
  int64_t seed = -1;
  int threads = 0;
  bool json = false, bf16 = false, summary = false;
};

void print_classifier(const train::EvalResult& r, bool summary) {
  std::printf("accuracy %.4f  loss %.4f  (%lld examples)\n", r.accuracy, r.loss,
              static_cast<long long>(r.count));
  if (summary) return;
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

// Accuracy under every requested corruption (and clean), for the model and
// the baseline, with each corruption's CE and the mCE when a baseline is given.
int run_corruptions(const EvalCli& o, models::Model& model, const train::Dataset& data,
                    const train::Normalization& norm, train::EvalOptions eo, c10::Device device) {
  if (model.task() != models::Task::ImageClassification) {
    throw UsageError("--corrupt is for image classifiers");
  }
  const std::vector<eval::Corruption> list = eval::parse_corruptions(o.corrupt);
  models::ModelPtr baseline;
  if (!o.baseline.empty()) {
    baseline = models::load_model(o.baseline);
    if (baseline->task() != models::Task::ImageClassification) {
      throw UsageError(msg("--baseline ", o.baseline, " is not an image classifier"));
    }
    baseline->to(device);
  }
  const int64_t c = static_cast<int64_t>(norm.mean.size());
  const auto stats = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor mean = at::tensor(std::vector<float>(norm.mean.begin(), norm.mean.end())).to(stats).view({1, c, 1, 1});
  const at::Tensor sd = at::tensor(std::vector<float>(norm.std.begin(), norm.std.end())).to(stats).view({1, c, 1, 1});
  auto accuracy = [&](models::Model& m, const eval::Corruption* k) {
    eo.transform = nullptr;
    if (k) {
      const uint64_t base = std::hash<std::string>{}(k->name) * 31 + static_cast<uint64_t>(k->severity);
      eo.transform = [&, k, base](models::Batch& b, int64_t index) {
        const at::Tensor x01 = b.pixel_values.to(at::kFloat) * sd + mean;
        const at::Tensor y01 = eval::corrupt(x01, *k, base * 1000003ULL + static_cast<uint64_t>(index));
        b.pixel_values = ((y01 - mean) / sd).to(b.pixel_values.scalar_type());
      };
    }
    return train::evaluate(m, data, eo).accuracy;
  };
  nlohmann::json j = {{"model", o.model}, {"data", o.data}, {"split", o.split}};
  j["clean"] = accuracy(model, nullptr);
  if (baseline) j["baseline_clean"] = accuracy(*baseline, nullptr);
  nlohmann::json acc = nlohmann::json::object(), base_acc = nlohmann::json::object();
  ProgressBar::Options bo;
  bo.label = "corrupt";
  bo.unit = "eval";
  ProgressBar bar(static_cast<int64_t>(list.size()) * (baseline ? 2 : 1), bo);
  for (const auto& k : list) {
    acc[k.name][std::to_string(k.severity)] = accuracy(model, &k);
    bar.update(1, {});
    if (baseline) {
      base_acc[k.name][std::to_string(k.severity)] = accuracy(*baseline, &k);
      bar.update(1, {});
    }
  }
  bar.finish();
  j["accuracy"] = acc;
  if (baseline) {
    j["baseline"] = o.baseline;
    j["baseline_accuracy"] = base_acc;
    nlohmann::json ce = nlohmann::json::object();
    double sum = 0;
    for (auto it = acc.begin(); it != acc.end(); ++it) {
      double err = 0, base_err = 0;
      for (auto s = it.value().begin(); s != it.value().end(); ++s) {
        err += 1 - s.value().get<double>();
        base_err += 1 - base_acc[it.key()][s.key()].get<double>();
      }
      ce[it.key()] = base_err > 0 ? err / base_err : 0.0;
      sum += ce[it.key()].get<double>();
    }
    j["ce"] = ce;
    j["mce"] = ce.empty() ? 0.0 : sum / static_cast<double>(ce.size());
  }
  if (o.json) {
    std::cout << j.dump(2) << std::endl;
    return 0;
  }
  std::printf("clean accuracy %.4f", j["clean"].get<double>());
  if (baseline) std::printf(" (baseline %.4f)", j["baseline_clean"].get<double>());
  std::printf("\n");
  std::printf("\n%-16s %8s %8s %8s %8s %8s%s\n", "corruption", "s1", "s2", "s3", "s4", "s5",
              baseline ? "      CE" : "");
  for (auto it = acc.begin(); it != acc.end(); ++it) {
    std::printf("%-16s", it.key().c_str());
    for (int s = 1; s <= 5; ++s) {
      const std::string key = std::to_string(s);
      if (it.value().contains(key)) {
        std::printf(" %8.4f", it.value()[key].get<double>());
      } else {
        std::printf(" %8s", "-");
      }
    }
    if (baseline) std::printf(" %7.1f%%", 100 * j["ce"][it.key()].get<double>());
    std::printf("\n");
  }
  if (baseline) std::printf("\nmCE %.1f%% relative to %s\n", 100 * j["mce"].get<double>(), o.baseline.c_str());
  return 0;
}

// The share of examples whose greedy generation is exactly the target
// (text-to-text: a classifier's label name, a pair's target), compared as
// token ids up to </s>.
double exact_match(models::Seq2SeqModel& model, const train::Dataset& data, const train::EvalOptions& o) {
  train::Loader loader(data.size(), o.batch_size, 0, /*shuffle=*/false, /*drop_last=*/false);
  int64_t batches = loader.batches_per_epoch();
  if (o.max_batches > 0) batches = std::min(batches, o.max_batches);
  const bool was_training = model.is_training();
  model.eval();
  int64_t right = 0, total = 0;
  at::Generator gen = at::detail::createCPUGenerator(0);
  for (int64_t b = 0; b < batches; ++b) {
    const train::Example ex = data.batch(loader.next());
    const at::Tensor ids = ex.inputs.input_ids, mask = ex.inputs.attention_mask, labels = ex.labels;
    std::vector<std::vector<int64_t>> prompts, targets;
    for (int64_t r = 0; r < ids.size(0); ++r) {
      const int64_t n = mask[r].sum().item<int64_t>();
      prompts.emplace_back(ids[r].data_ptr<int64_t>(), ids[r].data_ptr<int64_t>() + n);
      std::vector<int64_t> t;
      for (int64_t i = 0; i < labels.size(1); ++i) {
        const int64_t id = labels[r][i].item<int64_t>();
        if (id < 0 || id == model.eos_token()) break;
        t.push_back(id);
      }
      targets.push_back(std::move(t));
    }
    models::GenerateOptions g;
    g.sampling.temperature = 0;
    g.max_tokens = labels.size(1);
    g.eos = model.eos_token();
    g.pad = model.pad_token();
    const auto got = models::generate(model, prompts, g, gen);
    for (size_t r = 0; r < got.size(); ++r) right += got[r] == targets[r];
    total += static_cast<int64_t>(got.size());
  }
  if (was_training) model.train();
  return total ? static_cast<double>(right) / static_cast<double>(total) : 0.0;
}

int run_eval(const EvalCli& o) {
  if (!o.baseline.empty() && o.corrupt.empty()) throw UsageError("--baseline needs --corrupt");
  if (!o.corrupt.empty()) eval::parse_corruptions(o.corrupt);  // bad names fail before any work
  set_threads(o.threads);
  const c10::Device device = select_device(o.device);
  models::ModelPtr model = models::load_model(o.model);
  const nlohmann::json manifest = manifest_of(o.model);
  const train::DataKind kind = train::sniff_data_kind(o.data);
  const bool seq2seq = model->task() == models::Task::Seq2SeqLM;
  const bool lm = model->task() == models::Task::CausalLM || seq2seq;
  // An encoder-decoder reads every kind of text: plain (span corruption),
  // labelled or paired (text to text).
  const bool text_to_text = seq2seq && (kind == train::DataKind::TextClassification ||
                                        kind == train::DataKind::TextPairs);
  if (!text_to_text && lm != (kind == train::DataKind::Text)) {
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
                       : split_seed_of(manifest);
  d.seq_len = o.seq_len > 0 ? o.seq_len : manifest_int(manifest, "seq_len", 128);
  d.text_field = o.text_field;
  if (kind == train::DataKind::ImageClassification) d.image = image_input_of(model->config(), manifest);
  if (text_to_text) {
    d.text_to_text = true;
    d.pad = static_cast<const models::Seq2SeqModel&>(*model).pad_token();
    d.decoder_start = static_cast<const models::Seq2SeqModel&>(*model).decoder_start_token();
  } else if (seq2seq) {
    // Span corruption as the model was pretrained with it (T5's defaults
    // without a manifest).
    auto number = [&](const char* key, double fallback) {
      auto it = manifest.find(key);
      return it != manifest.end() && it->is_number() ? it->get<double>() : fallback;
    };
    d.span_corruption = true;
    d.noise_density = number("noise_density", 0.15);
    d.mean_span = number("mean_span", 3.0);
    d.decoder_start = static_cast<const models::Seq2SeqModel&>(*model).decoder_start_token();
  }
  auto data = train::open_dataset(d, tok.get(), &norm);
  model->to(device);
  train::EvalOptions eo;
  eo.batch_size = o.batch_size;
  eo.max_batches = o.max_batches;
  eo.device = device;
  eo.bf16 = o.bf16;
  if (!o.json) log::info("evaluating on ", data->describe());
  if (!o.corrupt.empty()) return run_corruptions(o, *model, *data, norm, eo, device);
  const train::EvalResult r = train::evaluate(*model, *data, eo);
  double exact = -1;
  if (text_to_text) exact = exact_match(static_cast<models::Seq2SeqModel&>(*model), *data, eo);
  if (o.json) {
    nlohmann::json j = r.to_json();
    if (exact >= 0) j["accuracy"] = exact;
    j["model"] = o.model;
    j["data"] = o.data;
    j["split"] = o.split;
    std::cout << j.dump(2) << std::endl;
  } else if (lm) {
    std::printf("loss %.4f  perplexity %.3f  bits/byte %.4f  (%lld tokens)\n", r.loss,
                r.perplexity, r.bits_per_byte, static_cast<long long>(r.count));
    if (exact >= 0) std::printf("accuracy %.4f  (exact match of the generated target)\n", exact);
  } else {
    print_classifier(r, o.summary);
  }
  return 0;
}

}  // namespace

Runner add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCli>();
  auto* cmd = app.add_subcommand("eval", verb_info("eval").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory")->required();
  cmd->add_option("--data", o->data, "Named data set or path (as for pretrain)")->required();
  cmd->add_option("--corrupt", o->corrupt,
                  "Images: accuracy under corruptions, NAME[:SEVERITY] or all (comma-separated; "
                  "gaussian_noise, shot_noise, impulse_noise, defocus_blur, motion_blur, contrast, "
                  "brightness, pixelate, jpeg)");
  cmd->add_option("--baseline", o->baseline,
                  "With --corrupt: a baseline model for each corruption's CE and the mCE");
  cmd->add_option("--split", o->split, "train, val, test or all (default test)");
  cmd->add_option("--batch-size", o->batch_size, "Examples per batch (default 16)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--seq-len", o->seq_len, "Window length (default: the model's training one)")
      ->check(integer_in(1, 1 << 24));
  cmd->add_option("--max-batches", o->max_batches, "Stop after N batches (default: all)")
      ->check(integer_in(0, 1e12));
  cmd->add_option("--split-seed,--seed", o->seed,
                  "Split seed (default: the model's split_seed, from recast_manifest.json)");
  cmd->add_option("--text-field", o->text_field, "JSON field holding the text (default text)");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_flag("--bf16", o->bf16, "bf16 autocast on CUDA");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)")
      ->check(integer_in(0, 4096));
  cmd->add_flag("--json", o->json, "Print the metrics as JSON");
  cmd->add_flag("--summary", o->summary,
                "One line: a classifier's accuracy and loss, without the per-class table and "
                "confusion matrix");
  return [o] { return run_eval(*o); };
}

}  // namespace recast::cli
