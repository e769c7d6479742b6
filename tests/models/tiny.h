#pragma once

// The one tiny-model builder the model tests share: the family's registered
// tiny config (models::ModelFactory::tiny) with `overrides` set in the
// family's layout (timm: model_args), fresh weights drawn from `seed`. With
// `perturb`, BatchNorm statistics and scales as a trained network has them:
// timm zero-initialises each residual block's last BatchNorm, which would hide
// a wrong block.

#include "recast/models/model.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <string>

namespace recast::testing {

inline models::ModelPtr tiny_model(const std::string& arch,
                                   const nlohmann::json& overrides = nlohmann::json::object(),
                                   uint64_t seed = 0, bool perturb = false) {
  nlohmann::json config = models::factory_of(arch).tiny;
  for (const auto& [key, value] : overrides.items()) models::set_config_value(config, arch, key, value);
  torch::manual_seed(seed);
  models::ModelPtr m = models::create_model(arch, config);
  m->init_weights();
  if (perturb) {
    torch::NoGradGuard no_grad;
    for (auto& b : m->named_buffers(true)) {
      if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 2.0);
      if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0, 0.1);
    }
    for (auto& p : m->named_parameters(true)) {
      if (p.key().find("bn") != std::string::npos) p.value().uniform_(0.5, 1.5);
    }
  }
  return m;
}

inline double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

// A decoder's logits for 2 x 23 random tokens (ids < 61) in one forward, and
// with its cache: `prefill` tokens at once, then one at a time. Returns the
// relative difference (max |a - b| / max |b|) and leaves the cache in `cache`.
inline double cached_vs_full(models::Model& m, int64_t prefill, models::KVCache& cache) {
  torch::NoGradGuard no_grad;
  models::Batch batch;
  batch.input_ids = torch::randint(61, {2, 23}, torch::kLong);
  const at::Tensor full = m.forward(batch);
  models::Batch part;
  part.input_ids = batch.input_ids.narrow(1, 0, prefill);
  std::vector<at::Tensor> logits{m.forward(part, nullptr, &cache)};
  for (int64_t t = prefill; t < 23; ++t) {
    part.input_ids = batch.input_ids.narrow(1, t, 1);
    logits.push_back(m.forward(part, nullptr, &cache));
  }
  return max_rel(at::cat(logits, 1), full);
}

}  // namespace recast::testing
