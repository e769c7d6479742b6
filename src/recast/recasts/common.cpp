#include "recast/recasts/recast.h"

#include "recast/train/hooks.h"
#include "recast/train/trainer.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace recast::recasts {

Registry<RecastPtr>& registry() {
  static Registry<RecastPtr> registry("recipe");
  return registry;
}

const Recast& get(const std::string& name) { return *registry().get(name).factory; }

const Recast* recast_for_config_key(const std::string& key) {
  for (const auto& [name, item] : registry().items()) {
    if (!key.empty() && item.factory->config_key() == key) return item.factory.get();
  }
  return nullptr;
}

std::shared_ptr<models::SlotFiller> Recast::parse_block(const nlohmann::json&) const {
  throw Error(msg("recast ", name(), " has no config block"));
}

std::vector<std::shared_ptr<train::TrainHook>> Recast::train_hooks(models::Model&,
                                                                    const nlohmann::json&) const {
  return {};
}

nlohmann::json with_fallbacks(const std::vector<OptionSpec>& specs, nlohmann::json values) {
  if (!values.is_object()) values = nlohmann::json::object();
  for (const auto& s : specs) {
    if (!values.contains(s.key) && !s.fallback.is_null()) values[s.key] = s.fallback;
  }
  return values;
}

void print_report(const std::vector<LayerReport>& report, const char* when) {
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
  std::fflush(stdout);
}

nlohmann::json report_json(const std::vector<LayerReport>& report) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : report) {
    nlohmann::json e = {{"module", r.module}, {"replaced", r.replaced}, {"relative_error", r.relative_error}};
    if (r.max_abs_error >= 0) e["max_abs_error"] = r.max_abs_error;
    if (!r.detail.empty()) e["measured_with"] = r.detail;
    j.push_back(e);
  }
  return j;
}

std::vector<const models::BuiltSlot*> slots_of(const models::Model& model, models::SlotKind kind,
                                               const std::string& recast) {
  std::vector<const models::BuiltSlot*> out;
  for (const auto& b : model.slots().built()) {
    if (b.slot.kind == kind && b.recast == recast) out.push_back(&b);
  }
  return out;
}

models::ModelPtr rebuild_with(const models::Model& source, const std::string& key,
                              const nlohmann::json& block, uint64_t seed,
                              const std::function<bool(const std::string&)>& expected,
                              std::vector<std::string>* fresh,
                              const std::function<bool(const std::string&)>& droppable,
                              std::vector<std::string>* dropped) {
  nlohmann::json config = source.config();
  config[key] = block;
  at::manual_seed(seed);  // the new parameters' initialisation
  models::ModelPtr model = models::create_model(source.arch(), config);
  *fresh = copy_matching_weights(source, *model, droppable, dropped);
  for (const auto& name : *fresh) {
    RECAST_CHECK(expected(name), "recipe: unexpected new tensor ", quote(name));
  }
  model->set_metadata(source.metadata());
  model->to(source.device());
  return model;
}

nlohmann::json transfer_curve(const std::string& metrics) {
  nlohmann::json curve = nlohmann::json::array();
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("split", "") == "train") {
      curve.push_back({{"step", j["step"]}, {"mse_sum", j["loss"]}});
    }
  }
  return curve;
}

nlohmann::json run_attention_transfer(models::Model& model, const RecipeOptions& o, int64_t steps,
                                      double lr, double clip, const std::string& train_regex,
                                      std::shared_ptr<train::Objective> objective) {
  RECAST_CHECK(!o.work_dir.empty(), "attention transfer: no scratch directory");
  RECAST_CHECK(o.train_data != nullptr, "attention transfer: no training data");
  train::TrainOptions t;
  t.out = (std::filesystem::path(o.work_dir) / "transfer").string();
  t.steps = steps;
  t.batch_size = o.batch_size;
  t.lr = lr;
  t.warmup = steps / 10;
  t.min_lr_ratio = 0.1;
  t.weight_decay = 0;
  t.beta2 = 0.999;
  t.clip = clip;
  t.log_every = 10;
  t.train_regex = train_regex;
  t.seed = o.seed;
  t.device = o.device;
  t.objective = std::move(objective);
  t.label = "transfer";
  t.save_final = false;      // the conversion saves the model
  t.stop_on_signal = false;  // a signal ends convert (its output removed)
  train::train(model, *o.train_data, nullptr, t, {});
  for (auto& p : model.parameters(true)) p.set_requires_grad(true);
  return {{"steps", steps}, {"lr", lr}, {"data", o.data}, {"curve", transfer_curve(t.out + "/metrics.jsonl")}};
}

nlohmann::json output_change(models::Model& before_model, models::Model& after_model,
                             const models::Batch& probe) {
  torch::NoGradGuard no_grad;
  before_model.eval();
  after_model.eval();
  const at::Tensor before = before_model.forward(probe).to(at::kDouble);
  const at::Tensor after = after_model.forward(probe).to(at::kDouble);
  const at::Tensor diff = after - before;
  return {{"max_abs", diff.abs().max().item<double>()},
          {"relative", (diff.norm() / before.norm().clamp_min(1e-300)).item<double>()},
          {"same_argmax", after.argmax(-1).eq(before.argmax(-1)).to(at::kDouble).mean().item<double>()}};
}

std::vector<std::string> select_modules(const std::vector<std::string>& candidates,
                                        const std::string& pattern) {
  if (pattern.empty()) return candidates;
  std::regex re;
  try {
    re = std::regex(pattern);
  } catch (const std::regex_error& e) {
    throw UsageError(msg("--layers ", quote(pattern), ": not a valid regex (", e.what(), ")"));
  }
  std::vector<std::string> out;
  for (const auto& c : candidates) {
    if (std::regex_search(c, re)) out.push_back(c);
  }
  if (out.empty()) {
    throw UsageError(msg("--layers ", quote(pattern), " matches none of the ", candidates.size(),
                         " replaceable modules (",
                         candidates.empty() ? std::string("none")
                                            : msg(quote(candidates.front()), " ... ",
                                                  quote(candidates.back())),
                         ")"));
  }
  return out;
}

int64_t recalibrate_batchnorm(models::Model& model, const std::vector<models::Batch>& batches) {
  std::vector<std::pair<torch::nn::BatchNorm2dImpl*, c10::optional<double>>> norms;
  for (const auto& item : model.named_modules("", false)) {
    if (auto* bn = item.value()->as<torch::nn::BatchNorm2d>()) {
      if (!bn->options.track_running_stats()) continue;
      norms.emplace_back(bn, bn->options.momentum());
      bn->reset_running_stats();
      bn->options.momentum(c10::nullopt);  // cumulative average
    }
  }
  if (!norms.empty()) {
    torch::NoGradGuard no_grad;
    model.train();
    for (const auto& b : batches) model.forward(b);
  }
  for (auto& [bn, momentum] : norms) bn->options.momentum(momentum);
  model.eval();
  return static_cast<int64_t>(norms.size());
}

std::map<std::string, at::Tensor> named_tensors(const models::Model& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : m.named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : m.named_buffers(true)) out[b.key()] = b.value();
  return out;
}

std::vector<std::string> copy_matching_weights(const models::Model& from, models::Model& to,
                                               const std::function<bool(const std::string&)>& droppable,
                                               std::vector<std::string>* dropped) {
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> target = named_tensors(to);
  auto copy = [&](const std::string& name, const at::Tensor& value) {
    auto it = target.find(name);
    if (it == target.end() && droppable && droppable(name)) {
      if (dropped) dropped->push_back(name);
      return;
    }
    if (it == target.end()) throw Error(msg("recipe: the converted model has no tensor ", quote(name)));
    RECAST_CHECK(it->second.sizes() == value.sizes(), "recipe: tensor ", quote(name), ": ",
                 shape_string(value.sizes()), " in the source, ", shape_string(it->second.sizes()),
                 " in the converted model");
    it->second.copy_(value);
    target.erase(it);
  };
  for (const auto& p : from.named_parameters(true)) copy(p.key(), p.value());
  for (const auto& b : from.named_buffers(true)) copy(b.key(), b.value());
  std::vector<std::string> fresh;
  for (const auto& kv : target) fresh.push_back(kv.first);
  return fresh;
}

}  // namespace recast::recasts
