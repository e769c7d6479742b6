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
//
// Static decoding state (reserve()): each softmax layer's keys and values live
// in buffers of `reserved()` positions, allocated on the layer's first append;
// a step writes its keys in place and attends to a view of the keys held, so
// decoding copies no history and, past the first step, allocates no cache. A
// call that needs more positions reallocates (doubling) before it writes;
// clear() forgets the tokens and keeps every buffer and state tensor (their
// addresses too, which a captured CUDA graph relies on). Without reserve(),
// each append concatenates (the training / one-shot path).
//
// Fixed-shape steps (set_fixed_step(), for CUDA graphs): a one-token step
// writes its keys at buffer index `slot` (int64 [1] on the device) and attends
// over the whole buffer, masked by `valid` (bool [B, reserved]: that row's key
// at that index is written and real); the linear and convolution states are
// updated in place. Nothing in such a step reads a value on the host.
struct KVCache {
  std::vector<at::Tensor> keys, values;  // storage; see past() for the keys held
  // Encoder-decoder models: each layer's cross-attention keys and values,
  // projected from the encoder's states once, on the first decoding step.
  std::vector<at::Tensor> cross_keys, cross_values;
  std::vector<ops::LinearState> linear;
  // Token mixers that read a window of their inputs (causal convolutions):
  // each layer's last inputs [B, window, C], a constant size.
  std::vector<at::Tensor> windows;
  int64_t tokens = 0;
  // Fixed-shape steps: see above. Undefined otherwise.
  at::Tensor slot, valid;

  int64_t length() const { return tokens; }
  ops::LinearState& linear_state(size_t layer) {
    if (linear.size() <= layer) linear.resize(layer + 1);
    return linear[layer];
  }
  // Appends this step's keys and values to layer `layer` and returns the
  // keys and values it holds.
  std::pair<at::Tensor, at::Tensor> append(size_t layer, const at::Tensor& k, const at::Tensor& v);
  // Drops all but the last `keep` keys and values of layer `layer` (a
  // sliding window's rolling cache).
  void keep_last(size_t layer, int64_t keep);
  // The keys and values layer `layer` holds (undefined when none).
  std::pair<at::Tensor, at::Tensor> past(size_t layer) const;
  int64_t held(size_t layer) const;

  // Static state: buffers of `positions` keys per layer (see above).
  void reserve(int64_t positions);
  int64_t reserved() const { return reserved_; }
  bool fixed_step() const { return slot.defined(); }
  // Starts fixed-shape steps (slot int64 [1], valid bool [B, reserved], both
  // on the cache's device and updated by the caller between steps) / ends
  // them with `total_tokens` written.
  void set_fixed_step(const at::Tensor& slot, const at::Tensor& valid);
  void end_fixed_steps(int64_t total_tokens);
  // Forgets every token; keeps the buffers (zeroes the recurrent states and
  // windows in place, drops the cross-attention keys).
  void clear();
  // Bytes held by buffers and states.
  double bytes() const;

 private:
  struct Span {
    int64_t start = 0, end = 0;  // the keys held: buffer indices [start, end)
  };
  std::vector<Span> spans_;
  int64_t reserved_ = 0;
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
