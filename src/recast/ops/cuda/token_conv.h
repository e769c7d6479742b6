#pragma once

// CUDA kernels of the depthwise convolution over time (ops/token_conv.h),
// for every kernel width K and dilation d, fp32 / fp64 / fp16 / bf16 with
// fp32 (fp64) accumulation. Compiled only when recast is built against a
// LibTorch with CUDA (RECAST_WITH_CUDA); ops/token_conv.cpp wraps them in an
// autograd function.
//
//   y[b, t, c] = sum_{j < K} w(b, t, g(c), j) * x[b, t + offset + j * d, c],
//
// x [B, Tin, C] contiguous, rows outside [0, Tin) read as zero; w [G, K]
// (shared) or [B, Tout, G, K] (dynamic), contiguous, in x's dtype; g(c) =
// c / (C / G). Each block stages a tile of 64 channels x 128 output rows and
// the window rows it needs in shared memory when they fit (spans up to a few
// hundred rows), and reads global memory directly beyond that: no K is
// refused.

#include <ATen/ATen.h>

namespace recast::ops::cuda {

// [B, Tout, C]
at::Tensor token_conv_forward(const at::Tensor& x, const at::Tensor& w, int64_t offset,
                              int64_t dilation, int64_t out);
// d loss / d x: [B, Tin, C] from gy [B, Tout, C].
at::Tensor token_conv_grad_input(const at::Tensor& gy, const at::Tensor& w, int64_t offset,
                                 int64_t dilation, int64_t in);
// d loss / d w in w's layout, fp32 (fp64 for fp64 inputs).
at::Tensor token_conv_grad_weight(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                  int64_t offset, int64_t dilation);

}  // namespace recast::ops::cuda
