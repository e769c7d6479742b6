#include "recast/recipes/recipe.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <map>

namespace recast::recipes {

Registry<Recipe>& recipe_registry() {
  static Registry<Recipe> registry = [] {
    Registry<Recipe> r("recipe");
    register_t2r(r);
    register_tcnn(r);
    register_factorize(r);
    return r;
  }();
  return registry;
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

std::vector<std::string> copy_matching_weights(const models::Model& from, models::Model& to) {
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> target = named_tensors(to);
  auto copy = [&](const std::string& name, const at::Tensor& value) {
    auto it = target.find(name);
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

}  // namespace recast::recipes
