#pragma once

// Causal linear attention with T2R's normaliser (Kasai et al. 2021):
//   y_t = phi(q_t)^T S_t / max(phi(q_t) . z_t, eps),
//   S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t),
// in three forms that agree (tested forward and backward against fp64):
//   parallel   the masked quadratic form (the reference; training in T2R's code)
//   chunked    block-parallel, linear in T (training and prefill)
//   recurrent  one token at a time on a constant-size state (generation)
// Inputs are features, not raw queries/keys: fq = phi(q), fk = phi(k)
// [B, H, T, k] (non-negative), v [B, H, T, dv]. Everything is computed in
// fp32 and returned in v's dtype; the state is always fp32.

#include <ATen/ATen.h>

namespace recast::ops {

// The recurrent state of one layer: s [B, H, k, dv], z [B, H, k] (fp32).
struct LinearState {
  at::Tensor s, z;
  bool defined() const { return s.defined(); }
};

struct LinearAttentionOptions {
  double eps = 1e-2;     // the normaliser's floor (T2R's official value)
  int64_t chunk = 64;    // chunked form: tokens per block
  // Recurrent form: take the LibTorch path even where the fused CUDA kernel
  // applies (one token on the GPU, no autograd). For tests and benchmarks.
  bool reference = false;
};

// key_padding: bool [B, T], true = real token; padded keys contribute nothing.
at::Tensor linear_attention_parallel(const at::Tensor& fq, const at::Tensor& fk,
                                     const at::Tensor& v, const at::Tensor& key_padding = {},
                                     const LinearAttentionOptions& options = {});

// Continues from `state` when it is defined (prefill after earlier tokens) and,
// when `final_state` is given, stores the state after the last token there.
at::Tensor linear_attention_chunked(const at::Tensor& fq, const at::Tensor& fk,
                                    const at::Tensor& v, const at::Tensor& key_padding = {},
                                    const LinearAttentionOptions& options = {},
                                    const LinearState* state = nullptr,
                                    LinearState* final_state = nullptr);

// Token by token over T (T = 1 when decoding), updating `state` in place
// (created when undefined). One token on the GPU without autograd runs the
// fused kernel of ops/cuda/linear_attention_step.h when recast has it; the
// state's tensors are then updated in place rather than replaced.
at::Tensor linear_attention_recurrent(const at::Tensor& fq, const at::Tensor& fk,
                                      const at::Tensor& v, LinearState& state,
                                      const at::Tensor& key_padding = {},
                                      const LinearAttentionOptions& options = {});

}  // namespace recast::ops
