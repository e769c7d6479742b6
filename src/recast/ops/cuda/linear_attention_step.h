#pragma once

// The fused CUDA form of one decoding step of causal linear attention (one
// token, inference only): the state update and the read-out in one kernel,
// instead of the ~8 launches of the LibTorch form. Compiled only when recast
// is built against a LibTorch with CUDA (RECAST_BUILT_WITH_CUDA_KERNELS).
//
//   s += phi(k) v^T,  z += phi(k),  y = phi(q)^T s / max(phi(q) . z, eps)
//
// fq, fk [B, H, 1, k], v [B, H, 1, dv] (fp32, fp16 or bf16, one dtype, on one
// GPU); s [B, H, k, dv] and z [B, H, k] fp32 contiguous, updated in place;
// keep: bool [B] or undefined (false: this sequence's key is padding and adds
// nothing). Returns y [B, H, 1, dv] in v's dtype.

#include <ATen/ATen.h>

namespace recast::ops::cuda {

// True when linear_attention_step can take these tensors.
bool linear_attention_step_supported(const at::Tensor& fq, const at::Tensor& fk,
                                     const at::Tensor& v, const at::Tensor& s,
                                     const at::Tensor& z);

at::Tensor linear_attention_step(const at::Tensor& fq, const at::Tensor& fk, const at::Tensor& v,
                                 const at::Tensor& keep, at::Tensor& s, at::Tensor& z,
                                 double eps);

}  // namespace recast::ops::cuda
