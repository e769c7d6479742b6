// recast convert --recipe NAME --model DIR --out DIR [--layers REGEX] [recipe options]
// Recasts a pretrained checkpoint; OUT is a checkpoint directory every verb
// accepts (its config says how it was converted) plus recast_manifest.json
// with the recipe, its options and the per-layer error report.
// t2r: [--feature-map t2r|elu1|hedgehog] [--feature-dim 64] [--eps 0.01]
//      [--data SPEC --transfer-steps N]: attention transfer (train only the
//      feature maps to reproduce each layer's softmax attention, MSE).
// tcnn: [--hard | --alpha A] [--qk-dim D] [--data SPEC]
// factorize: (--rank-ratio R | --energy E | --params F) [--data SPEC]
// merge: (no options)

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/core/version.h"
#include "recast/io/file.h"
#include "recast/recipes/recipe.h"
#include "recast/train/optim.h"

#include <torch/torch.h>

#include <unistd.h>

#include <cstdio>
#include <cmath>
#include <filesystem>
#include <limits>

namespace fs = std::filesystem;

namespace recast::cli {
namespace {

constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();

struct ConvertCli {
  std::string recipe, model, out, layers, feature_map = "t2r", data, device = "cpu";
  int64_t feature_dim = 64, transfer_steps = 0, batch_size = 8, seq_len = 128;
  double eps = 1e-2, transfer_lr = 1e-2, alpha = 0;
  // factorize's rules; NaN: not given.
  double rank_ratio = kUnset, energy = kUnset, params = kUnset;
  bool no_dense_fallback = false;
  int64_t recalibrate_bn = 0;
  int64_t whiten = 0;
  double whiten_damp = std::nan("");
  int64_t qk_dim = 0;
  uint64_t seed = 0;
  int threads = 0;
};

void print_report(const std::vector<recipes::LayerReport>& report, const char* when) {
  if (report.empty()) return;
  const bool abs = report.front().max_abs_error >= 0;
  if (abs) {
    std::printf("%-28s  %-12s  %-12s  %s\n", "layer", "max abs err", "relative", when);
  } else {
    std::printf("%-28s  %s\n", "layer", when);
  }
  for (const auto& r : report) {
    if (abs) {
      std::printf("%-28s  %-12.3e  %-12.3e  %s\n", r.module.c_str(), r.max_abs_error,
                  r.relative_error, r.detail.c_str());
    } else {
      std::printf("%-28s  %.4f\n", r.module.c_str(), r.relative_error);
    }
  }
}

nlohmann::json report_json(const std::vector<recipes::LayerReport>& report) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : report) {
    nlohmann::json e = {{"module", r.module}, {"replaced", r.replaced}, {"relative_error", r.relative_error}};
    if (r.max_abs_error >= 0) e["max_abs_error"] = r.max_abs_error;
    if (!r.detail.empty()) e["measured_with"] = r.detail;
    j.push_back(e);
  }
  return j;
}

// Trains only the feature maps so that each linear layer reproduces the softmax
// attention it replaced (per-layer MSE, summed), on the source's own inputs.
nlohmann::json attention_transfer(models::Model& model, const train::Dataset& data,
                                  const ConvertCli& o, c10::Device device) {
  std::vector<std::pair<std::string, at::Tensor>> maps;
  for (auto& p : model.named_parameters(true)) {
    const bool on = p.key().find(".feature_map.") != std::string::npos;
    p.value().set_requires_grad(on);
    if (on) maps.emplace_back(p.key(), p.value());
  }
  if (maps.empty()) throw UsageError("--transfer-steps: the feature maps have no parameters (elu1)");
  train::AdamW opt({{"maps", 0.0, {}, {}}}, {0.9, 0.999, 1e-8});
  {
    std::vector<train::ParamGroup> groups(1);
    groups[0].name = "feature_maps";
    for (auto& [name, p] : maps) {
      groups[0].names.push_back(name);
      groups[0].params.push_back(p);
    }
    opt = train::AdamW(std::move(groups), {0.9, 0.999, 1e-8});
  }
  train::Loader loader(data.size(), o.batch_size, o.seed, true, true);
  ProgressBar::Options bo;
  bo.label = "transfer";
  bo.unit = "step";
  ProgressBar bar(o.transfer_steps, bo);
  model.eval();  // no dropout; the maps still train
  model.set_attention_transfer(true);
  nlohmann::json curve = nlohmann::json::array();
  for (int64_t step = 0; step < o.transfer_steps; ++step) {
    const train::Example ex = data.batch(loader.next());
    model.forward(train::to_device(ex.inputs, device));
    at::Tensor loss = at::zeros({}, at::TensorOptions().device(device));
    for (const auto& e : model.attention_transfer_errors()) loss = loss + e.mse;
    loss.backward();
    const double value = loss.item<double>();
    RECAST_CHECK(std::isfinite(value), "attention transfer step ", step + 1, ": loss is ", value);
    opt.step(train::cosine_lr(step, o.transfer_steps, o.transfer_steps / 10, o.transfer_lr, 0.1));
    for (auto& [name, p] : maps) p.mutable_grad() = at::Tensor();
    bar.update(1, {{"mse", value}});
    if ((step + 1) % 10 == 0 || step + 1 == o.transfer_steps) {
      curve.push_back({{"step", step + 1}, {"mse_sum", value}});
    }
  }
  bar.finish();
  model.set_attention_transfer(false);
  for (auto& p : model.parameters(true)) p.set_requires_grad(true);
  return curve;
}

int run_convert(const ConvertCli& o) {
  set_threads(o.threads);
  const c10::Device device = select_device(o.device);
  const auto& recipe = recipes::recipe_registry().get(o.recipe).factory;
  if (fs::exists(o.out) && !fs::is_empty(o.out)) {
    throw UsageError(msg("--out ", quote(o.out), " exists and is not empty"));
  }
  if (o.recalibrate_bn != 0 && (o.recipe != "factorize" || o.data.empty() || o.recalibrate_bn < 0)) {
    throw UsageError(msg("--recalibrate-bn ", o.recalibrate_bn,
                         ": expected N >= 1 batches with --recipe factorize and --data (images)"));
  }
  if (o.whiten != 0 && (o.recipe != "factorize" || o.data.empty() || o.whiten < 0)) {
    throw UsageError(msg("--whiten ", o.whiten,
                         ": expected N >= 1 batches with --recipe factorize and --data"));
  }
  if (!std::isnan(o.whiten_damp) && (o.whiten <= 0 || !(o.whiten_damp >= 0))) {
    throw UsageError(msg("--whiten-damp ", o.whiten_damp, ": expected a value >= 0, with --whiten N"));
  }
  if (o.transfer_steps > 0 && o.data.empty()) {
    throw UsageError("--transfer-steps needs --data (the text to match the attention on)");
  }
  models::ModelPtr source = models::load_model(o.model);
  const nlohmann::json source_manifest = manifest_of(o.model);  // its training facts
  source->to(device);
  std::unique_ptr<io::Tokenizer> tok = tokenizer_of_checkpoint(o.model);
  std::unique_ptr<train::Dataset> data;
  recipes::RecipeOptions ro;
  ro.layers = o.layers;
  ro.seed = o.seed;
  ro.values = {{"feature_map", o.feature_map}, {"feature_dim", o.feature_dim}, {"eps", o.eps},
               {"alpha", o.alpha > 0 ? nlohmann::json(o.alpha) : nlohmann::json(nullptr)},
               {"qk_dim", o.qk_dim}};
  const auto given = [](double v) { return !std::isnan(v); };
  if (given(o.rank_ratio)) ro.values["rank_ratio"] = o.rank_ratio;
  if (given(o.energy)) ro.values["energy"] = o.energy;
  if (given(o.params)) ro.values["params"] = o.params;
  if (o.no_dense_fallback) ro.values["dense_fallback"] = false;
  if (!std::isnan(o.whiten_damp)) ro.values["whiten_damp"] = o.whiten_damp;
  // N shuffled training batches (the same for BatchNorm and whitening).
  const auto training_batches = [&](train::Dataset& split, int64_t n) {
    std::vector<models::Batch> out;
    train::Loader loader(split.size(), o.batch_size, o.seed, /*shuffle=*/true, true);
    for (int64_t i = 0; i < n; ++i) out.push_back(train::to_device(split.batch(loader.next()).inputs, device));
    return out;
  };
  if ((given(o.rank_ratio) || given(o.energy) || given(o.params)) && o.recipe != "factorize") {
    throw UsageError(msg("--rank-ratio / --energy / --params are options of --recipe factorize, not ",
                         o.recipe));
  }
  const bool images = source->task() == models::Task::ImageClassification;
  if (images && o.transfer_steps > 0) {
    throw UsageError("--transfer-steps: attention transfer is for language models (t2r)");
  }
  if (!o.data.empty() && images) {
    // Test images for the equivalence report, normalised as the model was trained.
    train::Normalization norm = normalization_of(source->config());
    train::DataOptions d{o.data, "test", split_seed_of(source_manifest),
                         o.seq_len, "text"};
    auto test = train::open_dataset(d, nullptr, &norm);
    train::Loader probe_loader(test->size(), o.batch_size, 0, false, false);
    ro.probe = train::to_device(test->batch(probe_loader.next()).inputs, device);
    if (o.recalibrate_bn > 0 || o.whiten > 0) {
      d.split = "train";
      auto train_split = train::open_dataset(d, nullptr, &norm);
      ro.calibration = training_batches(*train_split, o.recalibrate_bn);
      ro.whitening = training_batches(*train_split, o.whiten);
    }
  } else if (!o.data.empty()) {
    if (o.recalibrate_bn > 0) {
      throw UsageError("--recalibrate-bn: re-estimates BatchNorm statistics of image models; "
                       "this model reads text");
    }
    if (!tok) throw Error(msg(o.model, ": no tokenizer files; --data needs them"));
    train::DataOptions d{o.data, "train", split_seed_of(source_manifest),
                         o.seq_len, "text"};
    data = train::open_dataset(d, tok.get());
    d.split = "val";
    auto val = train::open_dataset(d, tok.get());
    train::Loader probe_loader(val->size(), o.batch_size, 0, false, false);
    ro.probe = train::to_device(val->batch(probe_loader.next()).inputs, device);
    ro.whitening = training_batches(*data, o.whiten);
  } else {
    ro.probe = train::to_device(source->example_batch(4, o.seed), device);
  }
  recipes::Conversion c = recipe(*source, ro);
  if (c.table.empty()) {
    log::info("converted ", c.report.size(), " layers (", o.recipe, "); error of each "
              "layer's output against the layer it replaced, on the same inputs:");
    print_report(c.report, "at init");
  } else {
    log::info("converted ", c.report.size(), " layers (", o.recipe, "):");
    std::fputs(c.table.c_str(), stdout);
  }
  std::fflush(stdout);
  if (c.manifest.contains("logits_change") && !c.manifest["logits_change"].is_null()) {
    const auto& lc = c.manifest["logits_change"];
    const auto& same = lc["same_argmax"];
    log::info("whole network on ", o.data.empty() ? "random inputs" : o.data, ": logits max abs change ",
              lc["max_abs"].get<double>(), " (relative ", lc["relative"].get<double>(), "), ",
              same.is_boolean() ? (same.get<bool>() ? "same predictions" : "DIFFERENT predictions")
                                : msg(same.get<double>() * 100, "% of predictions unchanged"));
  }
  nlohmann::json manifest = {{"made_by", "recast convert"},
                             {"from", o.model},
                             {"recast_version", RECAST_VERSION},
                             {"conversion", c.manifest},
                             {"error_at_init", report_json(c.report)}};
  if (o.transfer_steps > 0) {
    nlohmann::json curve = attention_transfer(*c.model, *data, o, device);
    auto after = recipes::measure_t2r(*c.model, ro.probe);
    print_report(after, msg("after ", o.transfer_steps, " transfer steps").c_str());
    manifest["attention_transfer"] = {{"steps", o.transfer_steps}, {"lr", o.transfer_lr},
                                      {"data", o.data}, {"curve", curve},
                                      {"error_after", report_json(after)}};
  }
  // Carry the source's training facts (split, seq_len) so eval and finetune
  // pick the same split.
  for (const char* key : {"seed", "seq_len", "data", "tokenizer"}) {
    if (source_manifest.contains(key)) manifest[key] = source_manifest[key];
  }
  manifest["split_seed"] = split_seed_of(source_manifest);
  // Everything goes into a temporary directory renamed into place at the end.
  const fs::path out(o.out);
  const fs::path tmp = out.parent_path() / msg(".", out.filename().string(), ".tmp-", ::getpid());
  fs::remove_all(tmp);
  try {
    c.model->to(c10::kCPU);
    models::save_model(*c.model, tmp.string());
    if (tok) tok->save(tmp.string());
    io::write_file_atomic((tmp / "recast_manifest.json").string(), manifest.dump(2) + "\n");
    if (fs::exists(out)) fs::remove(out);  // empty (checked above)
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  log::info("wrote ", o.out);
  return 0;
}

}  // namespace

Runner add_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertCli>();
  auto* cmd = app.add_subcommand("convert", verb_info("convert").summary);
  cmd->add_option("--recipe", o->recipe, "Recipe (see 'recast list'): t2r, tcnn, factorize, merge")->required();
  cmd->add_option("--model", o->model, "Checkpoint directory to convert")->required();
  cmd->add_option("--out", o->out, "Directory for the converted checkpoint (new or empty)")
      ->required();
  cmd->add_option("--layers", o->layers,
                  "Regex searched in each module's checkpoint name, e.g. 'h\\.[0-5]\\.' "
                  "(default: every replaceable module)");
  cmd->add_option("--feature-map", o->feature_map, "t2r: t2r, elu1 or hedgehog (default t2r)");
  cmd->add_option("--feature-dim", o->feature_dim, "t2r: features per head (default 64)");
  cmd->add_option("--eps", o->eps, "t2r: normaliser floor (default 0.01, T2R's)");
  cmd->add_option("--data", o->data,
                  "Data for the error report (text; images for tcnn) and attention transfer");
  auto* alpha = cmd->add_option("--alpha", o->alpha,
                                "tcnn: soft positional attention with this locality strength");
  cmd->add_flag_function("--hard", [o](int64_t) { o->alpha = 0; },
                         "tcnn: hard (one-hot) positional attention, exact (the default)")
      ->excludes(alpha);
  cmd->add_option("--qk-dim", o->qk_dim, "tcnn: query/key width per head (default max(16, C/K^2))");
  cmd->add_option("--rank-ratio", o->rank_ratio,
                  "factorize: rank = round(R * min(m, n)) in every selected layer");
  cmd->add_option("--energy", o->energy,
                  "factorize: the smallest rank keeping this fraction of sum s^2 per layer");
  cmd->add_option("--params", o->params,
                  "factorize: keep this fraction of the checkpoint's parameters (one energy "
                  "fraction for all selected layers)");
  cmd->add_option("--recalibrate-bn", o->recalibrate_bn,
                  "factorize: re-estimate BatchNorm statistics on N batches of --data's training "
                  "split after factorizing (no gradient steps)");
  cmd->add_option("--whiten", o->whiten,
                  "factorize: data-aware factors that keep each layer's outputs on N batches of "
                  "--data's training split, not its weights (SVD-LLM whitening); the rank rules "
                  "then read the output energy");
  cmd->add_option("--whiten-damp", o->whiten_damp,
                  "factorize: damping of the inputs' second moment, a fraction of its mean "
                  "diagonal (default 0.01)");
  cmd->add_flag("--no-dense-fallback", o->no_dense_fallback,
                "factorize: factorize every selected layer, also where the factors hold more "
                "numbers than the dense weight (full-rank exactness checks)");
  cmd->add_option("--transfer-steps", o->transfer_steps,
                  "t2r: train the feature maps to match softmax attention first (default 0)");
  cmd->add_option("--transfer-lr", o->transfer_lr, "Attention transfer learning rate (1e-2)");
  cmd->add_option("--batch-size", o->batch_size, "Attention transfer batch size (default 8)");
  cmd->add_option("--seq-len", o->seq_len, "Attention transfer window (default 128)");
  cmd->add_option("--seed", o->seed, "Seed of the new parameters and the data order (0)");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)");
  return [o] { return run_convert(*o); };
}

}  // namespace recast::cli
