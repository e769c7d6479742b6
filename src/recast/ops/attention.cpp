#include "recast/ops/attention.h"

#include "recast/core/error.h"
#include "recast/core/torch_compat.h"
#if RECAST_WITH_CUDA
#include "recast/ops/cuda/attention_decode.h"
#endif

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

namespace recast::ops {

at::Tensor repeat_kv(const at::Tensor& x, int64_t n) {
  if (n == 1) return x;
  auto s = x.sizes();
  return x.unsqueeze(2).expand({s[0], s[1], n, s[2], s[3]}).reshape({s[0], s[1] * n, s[2], s[3]});
}

namespace {

// The most negative finite value of `dtype` (torch.finfo(dtype).min).
double lowest(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return std::numeric_limits<double>::lowest();
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return -3.3895313892515355e38;
    default: return std::numeric_limits<float>::lowest();
  }
}

// The softmax runs in fp32 (or fp64 for fp64 scores: a masked fp64 score,
// the dtype's lowest, would become -inf in fp32 and a fully masked row NaN).
at::ScalarType softmax_dtype(const at::Tensor& scores) {
  return scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

at::Tensor additive_mask(const AttentionMask& mask, int64_t tq, int64_t tk, at::ScalarType dtype,
                         at::Device device) {
  if (!mask.causal && !mask.key_padding.defined()) return {};
  auto opts = at::TensorOptions().device(device);
  if (mask.slot.defined()) {
    RECAST_CHECK(tq == 1 && mask.key_padding.defined() && mask.key_padding.dim() == 2 &&
                     mask.key_padding.size(1) == tk,
                 "attention: a fixed-shape step takes one query and key_padding [B, ", tk, "]");
    at::Tensor keep = mask.key_padding.to(at::kBool);
    if (mask.window > 0) keep = keep & (at::arange(tk, opts.dtype(at::kLong)) > mask.slot - mask.window);
    return at::zeros(keep.sizes(), opts.dtype(dtype))
        .masked_fill(keep.logical_not(), lowest(dtype))
        .view({-1, 1, 1, tk});
  }
  at::Tensor keep = at::ones({1, 1, tq, tk}, opts.dtype(at::kBool));
  if (mask.causal) {
    // query i (absolute position offset + i) sees keys j <= offset + i
    at::Tensor qpos = at::arange(tq, opts.dtype(at::kLong)).unsqueeze(1) + mask.query_offset;
    at::Tensor kpos = at::arange(tk, opts.dtype(at::kLong)).unsqueeze(0) + mask.key_offset;
    keep = keep & (kpos <= qpos).view({1, 1, tq, tk});
    if (mask.window > 0) keep = keep & (kpos > qpos - mask.window).view({1, 1, tq, tk});
  }
  if (mask.key_padding.defined()) {
    RECAST_CHECK(mask.key_padding.dim() == 2 && mask.key_padding.size(1) == tk,
                 "attention_mask: expected [B, ", tk, "], found ", mask.key_padding.sizes());
    keep = keep & mask.key_padding.to(device, at::kBool).view({-1, 1, 1, tk});
  }
  return at::zeros(keep.sizes(), opts.dtype(dtype)).masked_fill(keep.logical_not(), lowest(dtype));
}

namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  RECAST_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
               "attention: expected 4-d q, k, v, found ", q.sizes(), ", ", k.sizes(), ", ",
               v.sizes());
  RECAST_CHECK(k.sizes().slice(0, 3) == v.sizes().slice(0, 3), "attention: k ", k.sizes(),
               " and v ", v.sizes(), " differ in batch, heads or length");
  RECAST_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0,
               "attention: q ", q.sizes(), " does not fit k ", k.sizes());
}

}  // namespace

at::Tensor attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionMask& mask, std::optional<double> scale) {
  check_shapes(q, k, v);
  const int64_t groups = q.size(1) / k.size(1);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  at::Tensor kk = repeat_kv(k, groups);
  at::Tensor vv = repeat_kv(v, groups);
  at::Tensor scores = at::matmul(q, kk.transpose(-2, -1)) * s;
  if (mask.bias.defined()) scores = scores + mask.bias.to(scores.scalar_type());
  at::Tensor m = additive_mask(mask, q.size(2), k.size(2), scores.scalar_type(), q.device());
  if (m.defined()) scores = scores + m;
  at::Tensor p = at::softmax(scores, -1, softmax_dtype(scores)).to(q.scalar_type());
  return at::matmul(p, vv);
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionMask& mask, std::optional<double> scale) {
  check_shapes(q, k, v);
  RECAST_CHECK(q.size(2) == 1, "attention_decode: expected one query, found ", q.size(2));
  const int64_t b = q.size(0), h = q.size(1), hkv = k.size(1), g = h / hkv, tk = k.size(2);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
#if RECAST_WITH_CUDA
  // Inference on CUDA: the fused kernels (two launches; masked keys unread).
  // They have no backward, so never where a gradient is wanted. Opt-in
  // (RECAST_DECODE_KERNEL=1) until tests/ops/attention_test.cpp's
  // CudaDecodeKernelsMatchTheReference has passed on the GPU machine.
  static const bool enabled = [] {
    const char* e = std::getenv("RECAST_DECODE_KERNEL");
    return e != nullptr && std::string(e) == "1";
  }();
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (enabled && q.is_cuda() && !grad && !mask.bias.defined()) {
    const cuda::DecodeMask dm{mask.key_padding, mask.slot, mask.causal, mask.query_offset, mask.key_offset,
                              mask.window};
    if (cuda::attention_decode_supported(q, k, v, dm)) return cuda::attention_decode(q, k, v, dm, s);
  }
#endif
  // The query heads of one key / value head as rows of one product: the
  // keys are read once, never repeated.
  const at::Tensor qg = q.reshape({b, hkv, g, q.size(3)});
  at::Tensor scores = at::matmul(qg, k.transpose(-2, -1)) * s;  // [B, Hkv, g, Tk]
  if (mask.bias.defined()) {
    const at::Tensor bias = mask.bias.to(scores.scalar_type());
    scores = scores + bias.expand({b, h, 1, tk}).reshape({b, hkv, g, tk});
  }
  at::Tensor m = additive_mask(mask, 1, tk, scores.scalar_type(), q.device());
  if (m.defined()) scores = scores + m;  // [B or 1, 1, 1, Tk]
  const at::Tensor p = at::softmax(scores, -1, softmax_dtype(scores)).to(q.scalar_type());
  return at::matmul(p, v).view({b, h, 1, v.size(3)});
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionMask& mask, std::optional<double> scale) {
#if RECAST_HAS_SDPA
  check_shapes(q, k, v);
  // Decoding (one query per sequence): two small products. The key length
  // changes every step, and a fused kernel that plans per shape pays for that
  // each time (the suspected cause of a ~65 ms per token constant in decode
  // on the H100; see docs/results.md).
  if (q.size(2) == 1) return attention_decode(q, k, v, mask, scale);
  const int64_t groups = q.size(1) / k.size(1);
  at::Tensor kk = repeat_kv(k, groups);
  at::Tensor vv = repeat_kv(v, groups);
  const bool plain_causal = mask.causal && !mask.key_padding.defined() && mask.query_offset == 0 &&
                            mask.window == 0 && mask.key_offset == 0 && q.size(2) == k.size(2) &&
                            !mask.bias.defined();
  at::Tensor m;
  if (!plain_causal) m = additive_mask(mask, q.size(2), k.size(2), q.scalar_type(), q.device());
  if (mask.bias.defined()) {
    const at::Tensor bias = mask.bias.to(q.scalar_type());
    m = m.defined() ? m + bias : bias;
  }
  return at::scaled_dot_product_attention(q, kk, vv,
                                          m.defined() ? std::optional<at::Tensor>(m) : std::nullopt,
                                          0.0, plain_causal, scale);
#else
  if (q.size(2) == 1) return attention_decode(q, k, v, mask, scale);
  return attention_reference(q, k, v, mask, scale);
#endif
}

}  // namespace recast::ops
