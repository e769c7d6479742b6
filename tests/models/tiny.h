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

}  // namespace recast::testing
