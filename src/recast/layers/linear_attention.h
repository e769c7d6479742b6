#pragma once

// T2R's linear attention as a layer piece: the learned feature map phi and the
// core that turns a pretrained attention's q, k, v into phi(q), phi(k) and the
// causal linear attention (ops/linear_attention.h), with the recurrent state in
// the model's KVCache for generation. The pretrained q/k/v/o projections stay
// where they are (GPT-2's c_attn / c_proj, Llama's q_proj ... o_proj); a
// converted layer only adds `feature_map.*` tensors.
//
// Feature maps (registry "feature map"):
//   t2r       relu(W_h x + b_h) per head, k features, one map for q and k,
//             queries pre-scaled by d^-1/2 (Kasai et al.; jungokasai/T2R)
//   elu1      1 + elu(x): parameter-free baseline (Katharopoulos et al.), k = d
//   hedgehog  softmax([W_h x, -W_h x]) per head, k/2 projections (LoLCATs)

#include "recast/core/registry.h"
#include "recast/layers/attention_core.h"
#include "recast/ops/linear_attention.h"

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <set>
#include <string>

namespace recast::layers {

class FeatureMapImpl : public torch::nn::Module {
 public:
  FeatureMapImpl(std::string kind, int64_t heads, int64_t head_dim, int64_t features);
  // x [B, H, T, d] -> [B, H, T, features] (non-negative)
  at::Tensor forward(const at::Tensor& x);
  // Fresh parameters: t2r as torch.nn.Linear initialises (U(-1/sqrt(d), 1/sqrt(d)),
  // what the official code uses); hedgehog the identity (LoLCATs' eye init)
  // when features / 2 == d, else the same uniform init.
  void reset_parameters();
  const std::string& kind() const { return kind_; }
  int64_t features() const { return features_; }

 private:
  std::string kind_;
  int64_t heads_, head_dim_, features_;
  at::Tensor weight_, bias_;
};
TORCH_MODULE(FeatureMap);

// name -> summary (the registry `recast list` shows); make() checks the name.
Registry<int>& feature_map_registry();

// What config.json's "recast_t2r" block says about a converted model.
struct T2RConfig {
  std::string feature_map = "t2r";
  int64_t features = 64;
  double eps = 1e-2;
  int64_t chunk = 64;
  std::set<int64_t> layers;  // decoder layer indices that use linear attention
  static std::optional<T2RConfig> from(const nlohmann::json& config);
  static T2RConfig parse(const nlohmann::json& block);  // the block itself
  nlohmann::json to_json() const;
  bool linear(int64_t layer) const { return layers.count(layer) != 0; }
};

// Linear attention over already-projected heads. q, k, v [B, H, T, d] (k, v with
// H heads: grouped-query heads are repeated by the caller); key_padding bool
// [B, T] for these T tokens. With a state (generation), T > 1 prefills with the
// chunked form and T == 1 steps the recurrence; without, the chunked form runs
// over the sequence (training).
at::Tensor t2r_attention(FeatureMap& phi, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& key_padding,
                         const T2RConfig& config, ops::LinearState* state);

// Attention transfer bookkeeping for one layer: while on, the layer also
// computes the softmax attention it replaces from the same q, k, v, records
// the mismatch, and passes the softmax output on, so each layer is measured
// (and trained) on the teacher's inputs.
struct TransferProbe {
  bool on = false;
  at::Tensor mse;
  double relative = 0;
  // Records the mismatch of y_lin against y_soft ([B, H, T, d]) and returns
  // what the layer passes on: y_soft while transferring.
  at::Tensor compare(const at::Tensor& y_lin, const at::Tensor& y_soft);
};

// T2R's attention core: the feature map (registered as "feature_map" on the
// attention module) and the linear attention over phi(q), phi(k); grouped
// key / value heads are repeated to the query heads first. On a rotary model
// q and k arrive rotated, so phi sees the rotated vectors (as LoLCATs does).
class T2RAttentionImpl : public AttentionCoreImpl {
 public:
  T2RAttentionImpl(AttentionSpec spec, T2RConfig config);
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const ops::AttentionMask& mask, KVCache* cache) override;
  std::string describe() const override;
  FeatureMap feature_map{nullptr};
  TransferProbe probe;
  const T2RConfig& config() const { return config_; }

 private:
  T2RConfig config_;
};

}  // namespace recast::layers
