#pragma once

// Rotary position embeddings as transformers computes them
// (modeling_rope_utils.py): the inverse frequencies of each rope type and the
// scale applied to cos / sin, in fp32 with the same operations in the same
// order, so that a checkpoint's logits match to the last bit the maths allows.
//
// Types: default, linear (positions divided by `factor`), dynamic (NTK
// scaling: the base grows once a forward's positions pass
// max_position_embeddings), yarn (ramp between interpolated and extrapolated
// frequencies, attention_factor on cos / sin), llama3 (Llama 3.1's
// wavelength bands). Others (longrope, proportional, ...) are refused by name.
//
// Where the parameters come from, as transformers 5.x reads them: the
// `rope_scaling` object when present and non-empty (4.x configs), else
// `rope_parameters`; rope_theta from that object, else the top level, else
// the family's default; original_max_position_embeddings from the top level
// (Phi-3 style) over the object, else max_position_embeddings.

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>

namespace recast::models {

struct Rope {
  std::string type = "default";
  int64_t dim = 0;            // rotary dimensions (head_dim)
  double theta = 10000.0;
  int64_t max_positions = 0;  // max_position_embeddings
  // linear, dynamic, yarn, llama3
  double factor = 1.0;
  int64_t original_max_positions = 0;  // yarn, llama3
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  // yarn
  std::optional<double> attention_factor, mscale, mscale_all_dim;
  double beta_fast = 32.0, beta_slow = 1.0;
  bool truncate = true;

  // inv_freq [dim / 2] fp32 on `device` and the cos / sin scale for a forward
  // whose largest position is seq_len - 1 (only dynamic depends on it:
  // transformers recomputes its frequencies from max(position_ids) + 1 when
  // that passes max_position_embeddings).
  std::pair<at::Tensor, double> frequencies(int64_t seq_len, at::Device device) const;
};

// The RoPE of a transformers config (see above); `head_dim` is the rotary
// width, `default_theta` the family's rope_theta default. Throws Error naming
// the key for an unsupported type, a missing or out-of-range parameter, an
// unknown key in the rope object.
Rope read_rope(const nlohmann::json& config, int64_t head_dim, int64_t max_positions,
               double default_theta = 10000.0);

}  // namespace recast::models
