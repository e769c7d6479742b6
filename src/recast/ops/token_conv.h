#pragma once

// Depthwise convolution over time for sequences x [B, T, C]: the operator of
// lightweight, dynamic and dilated convolutions (Wu et al. 2019; Tay et al.
// 2021). Channels are split into G contiguous blocks of C / G; channel c uses
// block g(c) = floor(c / (C / G)) of the kernel:
//
//   y[b, t, c] = sum_{j < K} w[g(c), j] * x[b, h + t - left + j * d, c]
//
// with zeros outside [0, T), h = options.history and left = d (K - 1)
// (causal: the window ends at the current position) or d floor((K - 1) / 2)
// (centred; an even K sees one more position on the right, as fairseq's
// padding_l does). `weight` is either shared by every position, [G, K]
// (lightweight: G heads; dilated: G = C), or one kernel per output position,
// [B, T - h, G, K] (dynamic). The first h rows of x are context only
// (decoding: the layer's last d (K - 1) inputs before this step's tokens);
// the output has T - h rows.
//
// Three paths that must agree forward and backward (tests/ops/token_conv_test.cpp):
//   Reference  an explicit loop over the K taps (shifted slices times the tap)
//   LibTorch   grouped conv1d (shared kernels) or unfold + batched matmul (dynamic)
//   Cuda       one tiled kernel per direction (ops/cuda/token_conv.h), every K
// Auto takes Cuda for CUDA tensors where recast has the kernels and LibTorch
// elsewhere; asking for Cuda where it cannot run falls back to LibTorch and
// says why at debug log level.

#include <ATen/ATen.h>

#include <string>

namespace recast::ops {

enum class ConvPath { Auto, Reference, LibTorch, Cuda };

struct TokenConvOptions {
  int64_t dilation = 1;
  bool causal = false;
  int64_t history = 0;  // leading rows of x that are context only
  ConvPath path = ConvPath::Auto;
};

// Positions the window reaches back from the current one (`left` above).
int64_t token_conv_left(int64_t kernel, int64_t dilation, bool causal);

// y [B, T - history, C] in x's dtype (the kernel is cast to it).
at::Tensor token_conv(const at::Tensor& x, const at::Tensor& weight,
                      const TokenConvOptions& options = {});

// The path token_conv takes for these inputs ("cuda", "libtorch", "reference"),
// and why where it is not the one asked for.
std::string token_conv_path(const at::Tensor& x, const at::Tensor& weight,
                            const TokenConvOptions& options, std::string* why = nullptr);

// Whether recast was built with the CUDA kernels.
bool token_conv_has_cuda();

}  // namespace recast::ops
