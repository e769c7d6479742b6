#pragma once

// One attention core for every family. A family's attention module projects
// q, k, v (and applies its position encoding); the core turns them into the
// attended values; the family projects the result out. Softmax attention is
// the default core; a recast's core (T2R's linear attention, and the map
// refinements and token mixers to come) stands in its place where the
// model's config asks for it, behind the same call.
//
// A core's child modules are registered on the attention module that holds
// it, so their tensors sit directly under the attention's checkpoint name
// ("transformer.h.3.attn.feature_map.weight"), and a core without tensors
// (softmax) adds none.

#include "recast/ops/attention.h"
#include "recast/ops/linear_attention.h"

#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace recast::layers {

// What a decoder remembers between calls: past keys and values of its softmax
// layers ([B, Hkv, T, d] per layer) and the constant-size state of its linear
// (T2R) layers. The model advances `tokens` after each forward.
struct KVCache {
  std::vector<at::Tensor> keys, values;
  // Encoder-decoder models: each layer's cross-attention keys and values,
  // projected from the encoder's states once, on the first decoding step.
  std::vector<at::Tensor> cross_keys, cross_values;
  std::vector<ops::LinearState> linear;
  // Token mixers that read a window of their inputs (causal convolutions):
  // each layer's last inputs [B, window, C], a constant size.
  std::vector<at::Tensor> windows;
  int64_t tokens = 0;
  int64_t length() const { return tokens; }
  ops::LinearState& linear_state(size_t layer) {
    if (linear.size() <= layer) linear.resize(layer + 1);
    return linear[layer];
  }
  // Appends this step's keys and values to layer `layer` and returns the
  // whole history.
  std::pair<at::Tensor, at::Tensor> append(size_t layer, const at::Tensor& k, const at::Tensor& v);
  // Drops all but the last `keep` keys and values of layer `layer` (a
  // sliding window's rolling cache).
  void keep_last(size_t layer, int64_t keep);
};

// The shape of one attention: what a core is built for.
struct AttentionSpec {
  int64_t layer = 0;       // the block's index (decoder layer, ViT block)
  int64_t heads = 1;       // query heads
  int64_t kv_heads = 1;    // key / value heads (grouped-query attention: fewer)
  int64_t head_dim = 1;
  double scale = 1.0;      // of the softmax scores
  bool causal = false;
  // Sliding window (causal only): a query sees the last `window` positions,
  // itself included, and the cache keeps only window - 1 keys; 0: all.
  int64_t window = 0;
};

class AttentionCoreImpl : public torch::nn::Module {
 public:
  explicit AttentionCoreImpl(AttentionSpec spec) : spec_(spec) {}
  // q [B, H, T, d], k and v [B, Hkv, T, d]; `mask` says which keys each query
  // sees (causal, padding, the cache offset); `cache` holds the layer's
  // decoding state (extended in place). Returns [B, H, T, d].
  virtual at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const ops::AttentionMask& mask, KVCache* cache) = 0;
  // What the layer computes, for reports ("softmax attention").
  virtual std::string describe() const = 0;
  const AttentionSpec& spec() const { return spec_; }

  // A token mixer that stands for the whole attention up to its output
  // projection (a convolution block with its own input projection) takes
  // the attention's input instead of q, k, v: the family then builds no
  // query, key or value projections and calls mix(x [B, T, D]), which
  // returns [B, H, T, head_dim] for the output projection as forward does.
  virtual bool mixes_input() const { return false; }
  virtual at::Tensor mix(const at::Tensor& x, const ops::AttentionMask& mask, KVCache* cache);

  // Called with every output of a softmax core while set (attention
  // transfer: the teacher's per-layer outputs, by the recipe that trains a
  // replacement to reproduce them).
  std::function<void(const at::Tensor&)> observer;

 protected:
  // The softmax attention of the spec (with the KV cache when given).
  at::Tensor softmax(const at::Tensor& q, at::Tensor k, at::Tensor v,
                     const ops::AttentionMask& mask, KVCache* cache) const;

 private:
  AttentionSpec spec_;
};

class SoftmaxAttentionImpl : public AttentionCoreImpl {
 public:
  using AttentionCoreImpl::AttentionCoreImpl;
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const ops::AttentionMask& mask, KVCache* cache) override {
    at::Tensor y = softmax(q, k, v, mask, cache);
    if (observer) observer(y);
    return y;
  }
  std::string describe() const override { return "softmax attention"; }
};

}  // namespace recast::layers
