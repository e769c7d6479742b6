#pragma once

// What the factorize recast offers beyond its registration (used by its
// tests): the layers of a model it can factorize, and multi-head attention's
// per-head weight products as factor pairs (Khodak et al.), read off the
// model's slots.

#include "recast/layers/factorized.h"
#include "recast/models/model.h"

#include <string>
#include <vector>

namespace recast::recasts {

// Dense Linear and Conv2d slots, by module name; `transposed` when the stored
// weight is [in, out] (transformers' Conv1D) rather than [out, in, ...].
struct DenseLayer {
  std::string name;
  bool transposed = false;
};
std::vector<DenseLayer> factorizable_layers(const models::Model& model);

// Per dense attention (its q/k/v/o projections dense), the per-head pairs
// (W_Q^h, W_K^h) and (W_V^h, W_O^h^T), each [heads, d_model, d_head]: views
// of the dense weights (differentiable), for Frobenius decay (--fd-attention).
// Grouped-query attention: each query head with its key / value group's.
std::vector<layers::FactorPair> attention_factor_pairs(const models::Model& model);

}  // namespace recast::recasts
