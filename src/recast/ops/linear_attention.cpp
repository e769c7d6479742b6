#include "recast/ops/linear_attention.h"

#include "recast/core/error.h"
#if RECAST_WITH_CUDA
#include "recast/ops/cuda/linear_attention_step.h"
#endif

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace recast::ops {
namespace {

void check(const at::Tensor& fq, const at::Tensor& fk, const at::Tensor& v,
           const at::Tensor& key_padding) {
  RECAST_CHECK(fq.dim() == 4 && fk.sizes() == fq.sizes() && v.dim() == 4 &&
                   v.size(0) == fq.size(0) && v.size(1) == fq.size(1) && v.size(2) == fq.size(2),
               "linear attention: expected phi(q), phi(k) [B, H, T, k] and v [B, H, T, dv], found ",
               shape_string(fq.sizes()), ", ", shape_string(fk.sizes()), ", ",
               shape_string(v.sizes()));
  if (key_padding.defined()) {
    RECAST_CHECK(key_padding.dim() == 2 && key_padding.size(0) == fq.size(0) &&
                     key_padding.size(1) == fq.size(2),
                 "linear attention: key_padding must be [B, T] = [", fq.size(0), ", ",
                 fq.size(2), "], found ", shape_string(key_padding.sizes()));
  }
}

// fp32 copies with padded keys (and their values) zeroed.
std::tuple<at::Tensor, at::Tensor, at::Tensor> prepare(const at::Tensor& fq, const at::Tensor& fk,
                                                        const at::Tensor& v,
                                                        const at::Tensor& key_padding) {
  // fp32 at least (fp64 inputs stay fp64: the tests' reference).
  const at::ScalarType t = fq.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor q = fq.to(t), k = fk.to(t), vv = v.to(t);
  if (key_padding.defined()) {
    at::Tensor keep = key_padding.to(k.device(), t).view({k.size(0), 1, k.size(2), 1});
    k = k * keep;
    vv = vv * keep;
  }
  return {q, k, vv};
}

// Linear attention runs in fp32 even inside a bf16 autocast region (the state
// must not be rounded): autocast is switched off for the op's own products.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace

at::Tensor linear_attention_parallel(const at::Tensor& fq, const at::Tensor& fk,
                                     const at::Tensor& v, const at::Tensor& key_padding,
                                     const LinearAttentionOptions& o) {
  NoAutocast no_autocast;
  check(fq, fk, v, key_padding);
  auto [q, k, vv] = prepare(fq, fk, v, key_padding);
  const int64_t t = q.size(2);
  at::Tensor a = at::matmul(q, k.transpose(-1, -2));  // [B, H, T, T]
  a = a * at::ones({t, t}, a.options()).tril();
  at::Tensor denom = a.sum(-1, /*keepdim=*/true).clamp_min(o.eps);
  return (at::matmul(a, vv) / denom).to(v.scalar_type());
}

at::Tensor linear_attention_chunked(const at::Tensor& fq, const at::Tensor& fk,
                                    const at::Tensor& v, const at::Tensor& key_padding,
                                    const LinearAttentionOptions& o, const LinearState* state,
                                    LinearState* final_state) {
  NoAutocast no_autocast;
  check(fq, fk, v, key_padding);
  RECAST_CHECK(o.chunk >= 1, "linear attention: chunk must be >= 1, found ", o.chunk);
  auto [q, k, vv] = prepare(fq, fk, v, key_padding);
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), f = q.size(3), dv = vv.size(3);
  const int64_t c = std::min(o.chunk, std::max<int64_t>(t, 1));
  const int64_t n = (t + c - 1) / c, padded = n * c;
  if (padded != t) {  // zero features past the end add nothing to any sum
    q = at::constant_pad_nd(q, {0, 0, 0, padded - t});
    k = at::constant_pad_nd(k, {0, 0, 0, padded - t});
    vv = at::constant_pad_nd(vv, {0, 0, 0, padded - t});
  }
  q = q.view({b, h, n, c, f});
  k = k.view({b, h, n, c, f});
  vv = vv.view({b, h, n, c, dv});
  // Within each chunk: the masked quadratic form.
  at::Tensor a = at::matmul(q, k.transpose(-1, -2)) * at::ones({c, c}, q.options()).tril();
  at::Tensor num = at::matmul(a, vv);            // [B, H, N, C, dv]
  at::Tensor den = a.sum(-1, /*keepdim=*/true);  // [B, H, N, C, 1]
  // Across chunks: the state before each chunk (exclusive prefix sums).
  at::Tensor kv = at::matmul(k.transpose(-1, -2), vv);  // [B, H, N, f, dv]
  at::Tensor ksum = k.sum(3);                           // [B, H, N, f]
  at::Tensor s_incl = kv.cumsum(2), z_incl = ksum.cumsum(2);
  at::Tensor s_prev = s_incl - kv, z_prev = z_incl - ksum;
  if (state && state->defined()) {
    s_prev = s_prev + state->s.unsqueeze(2);
    z_prev = z_prev + state->z.unsqueeze(2);
  }
  num = num + at::matmul(q, s_prev);
  den = den + at::matmul(q, z_prev.unsqueeze(-1));
  at::Tensor y = (num / den.clamp_min(o.eps)).view({b, h, padded, dv});
  if (final_state) {
    // Fresh tensors, never views: a view of the last chunk would keep every
    // chunk's prefix sums [B, H, N, k, dv] alive in the cache for as long as
    // the state lives (measured: 37 GB at batch 32, 32k tokens, 12 layers).
    at::Tensor s_last = s_incl.select(2, n - 1), z_last = z_incl.select(2, n - 1);
    if (state && state->defined()) {
      s_last = s_last + state->s;
      z_last = z_last + state->z;
    } else {
      s_last = s_last.clone(at::MemoryFormat::Contiguous);
      z_last = z_last.clone(at::MemoryFormat::Contiguous);
    }
    final_state->s = s_last;
    final_state->z = z_last;
  }
  return y.narrow(2, 0, t).to(v.scalar_type());
}

at::Tensor linear_attention_recurrent(const at::Tensor& fq, const at::Tensor& fk,
                                      const at::Tensor& v, LinearState& state,
                                      const at::Tensor& key_padding,
                                      const LinearAttentionOptions& o) {
  NoAutocast no_autocast;
  check(fq, fk, v, key_padding);
#if RECAST_WITH_CUDA
  // Decoding on the GPU without autograd: one fused kernel, state in place.
  if (fq.is_cuda() && fq.size(2) == 1 && !o.reference &&
      !(at::GradMode::is_enabled() && (fq.requires_grad() || fk.requires_grad() ||
                                       v.requires_grad()))) {
    if (!state.defined()) {
      state.s = at::zeros({fq.size(0), fq.size(1), fq.size(3), v.size(3)},
                          fq.options().dtype(at::kFloat));
      state.z = at::zeros({fq.size(0), fq.size(1), fq.size(3)}, fq.options().dtype(at::kFloat));
    }
    if (!state.s.requires_grad() && !state.z.requires_grad() &&
        state.s.sizes() == at::IntArrayRef({fq.size(0), fq.size(1), fq.size(3), v.size(3)}) &&
        cuda::linear_attention_step_supported(fq, fk, v, state.s, state.z)) {
      return cuda::linear_attention_step(fq, fk, v, key_padding, state.s, state.z, o.eps);
    }
  }
#endif
  auto [q, k, vv] = prepare(fq, fk, v, key_padding);
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), f = q.size(3), dv = vv.size(3);
  if (!state.defined()) {
    state.s = at::zeros({b, h, f, dv}, q.options());
    state.z = at::zeros({b, h, f}, q.options());
  }
  RECAST_CHECK(state.s.sizes() == at::IntArrayRef({b, h, f, dv}), "linear attention: state is ",
               shape_string(state.s.sizes()), ", expected ", shape_string(std::vector<int64_t>{b, h, f, dv}));
  const bool in_place = !(at::GradMode::is_enabled() &&
                          (q.requires_grad() || k.requires_grad() || vv.requires_grad() ||
                           state.s.requires_grad() || state.z.requires_grad()));
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(t));
  for (int64_t i = 0; i < t; ++i) {
    at::Tensor qi = q.select(2, i), ki = k.select(2, i), vi = vv.select(2, i);  // [B, H, *]
    if (in_place) {  // decoding: the state's tensors stay the same
      state.s.add_(ki.unsqueeze(-1) * vi.unsqueeze(-2));
      state.z.add_(ki);
    } else {  // autograd sees every step (the state tensors are not reused)
      state.s = state.s + ki.unsqueeze(-1) * vi.unsqueeze(-2);
      state.z = state.z + ki;
    }
    at::Tensor num = at::matmul(qi.unsqueeze(-2), state.s).squeeze(-2);         // [B, H, dv]
    at::Tensor den = (qi * state.z).sum(-1, /*keepdim=*/true).clamp_min(o.eps);  // [B, H, 1]
    out.push_back(num / den);
  }
  return at::stack(out, 2).to(v.scalar_type());
}

}  // namespace recast::ops
