#pragma once

// Pieces of the T5 family (models/t5.cpp) that tests check on their own.

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>

namespace recast::models {

// transformers' T5Attention._relative_position_bucket: int64 relative
// positions (key - query) -> buckets in [0, num_buckets). Bidirectional
// (encoder): half the buckets per direction; causal (decoder): only the past.
// Within each, half are exact distances and the rest logarithmic up to
// max_distance, in float32 as transformers computes them.
at::Tensor t5_relative_position_bucket(const at::Tensor& relative, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance);

// feed_forward_proj -> (gated, activation) as T5Config derives dense_act_fn
// and is_gated_act ("gated-gelu" is gelu_new, the tanh approximation).
std::pair<bool, std::string> t5_feed_forward(const std::string& feed_forward_proj);

}  // namespace recast::models
