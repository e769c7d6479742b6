#pragma once

// Softmax attention: the reference (math) path and the fused path
// (at::scaled_dot_product_attention, LibTorch >= 2.0), which must agree.

#include <ATen/ATen.h>

#include <optional>

namespace recast::ops {

// Which keys each query may see.
struct AttentionMask {
  bool causal = false;
  // Bool [B, Tk], true = a real token (transformers' attention_mask != 0).
  at::Tensor key_padding;
  // Queries sit at absolute positions [offset, offset + Tq) among the keys
  // (KV-cache decoding); only used with `causal`.
  int64_t query_offset = 0;
  // Sliding-window attention (Mistral, Qwen2's window layers), with causal:
  // a query at position p sees keys at positions > p - window; 0: all.
  int64_t window = 0;
  // The absolute position of the first key (a rolling cache that keeps
  // only the last keys); key_padding then covers the keys held.
  int64_t key_offset = 0;
  // Added to the scores before the softmax, after any scaling: [B or 1,
  // H, Tq, Tk] (T5's relative position bias). Undefined: none.
  at::Tensor bias;
  // Fixed-shape decoding (a CUDA graph's step): the query is the token at
  // buffer index `slot` (int64 [1] on the device), the keys are a whole
  // preallocated buffer and key_padding [B, Tk] says which hold a real,
  // written token (the causal part: none after the slot). With `window`, key
  // j is seen when j > slot - window. query_offset / key_offset are unused.
  at::Tensor slot;
};

// q: [B, H, Tq, d]; k: [B, Hkv, Tk, d], v: [B, Hkv, Tk, dv] (dv may differ from
// d, as T-CNN's value maps need) with H a multiple of Hkv (grouped-
// query attention: each key/value head serves H / Hkv query heads).
// Returns [B, H, Tq, dv]. `scale` defaults to d^-0.5. Masked scores are set to
// the dtype's lowest value, as transformers does, so a row with every key
// masked yields a uniform average instead of NaN.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionMask& mask, std::optional<double> scale = std::nullopt);

// The obviously-right path: scores in fp32, explicit mask, softmax, product.
at::Tensor attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionMask& mask,
                               std::optional<double> scale = std::nullopt);

// One query per sequence (decoding): each key / value head's query heads in
// one product, the keys read once (no repeat for grouped-query attention).
// Agrees with attention_reference. On CUDA without a gradient or a bias, and
// with RECAST_DECODE_KERNEL=1 (opt-in until verified on the GPU machine):
// ops/cuda/attention_decode.h's two kernels (a row with no visible key
// gives zeros there, which decoding never has: the query's own key is held).
at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionMask& mask, std::optional<double> scale = std::nullopt);

// [B, 1, Tq, Tk] additive mask (0 or lowest) for `mask`, or an undefined
// tensor when nothing is masked. mask.bias is not part of it.
at::Tensor additive_mask(const AttentionMask& mask, int64_t tq, int64_t tk, at::ScalarType dtype,
                         at::Device device);

// Repeats key/value heads [B, Hkv, T, d] -> [B, Hkv * n, T, d].
at::Tensor repeat_kv(const at::Tensor& x, int64_t n);

}  // namespace recast::ops
