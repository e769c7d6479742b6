// bench_token_conv kernel|block [--device cuda] [--iters N]
//
//   kernel  the depthwise convolution over time (ops/token_conv.h), bf16,
//           B=8, C=1024, T = 512..8192, K = 3..63: recast's CUDA kernel vs the
//           LibTorch path (cuDNN's grouped conv1d for shared kernels, unfold +
//           batched matmul for dynamic ones), forward and forward + backward,
//           beside the memory-bandwidth limit: the bytes the forward must
//           move (x read, y written, dynamic kernels read) over the copy
//           bandwidth measured in the same run (a 2 GiB device-to-device
//           copy: read + write) and over the H200's nominal 4.8 TB/s.
//   block   a convolution block (GLU projection D -> 2D, lightweight conv
//           K=31 with 12 kernels, output projection) vs the softmax attention
//           block it replaces (qkv projection, causal
//           ops::attention: at::scaled_dot_product_attention where LibTorch
//           has it, output projection), D=768,
//           12 heads, bf16, B=1, T = 512..32768, forward + backward.
// Medians of 5 repeats of --iters calls after warm-up; one JSON line per
// measurement on stdout, both sides in one process.

#include "recast/core/device.h"
#include "recast/layers/conv_mixer.h"
#include "recast/ops/attention.h"
#include "recast/ops/token_conv.h"
#include "bench_util.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

// Device-to-device copy bandwidth (bytes read + written per second).
double copy_gb_s(const c10::Device& d) {
  const at::Tensor a = torch::empty({int64_t{1} << 30}, torch::TensorOptions().dtype(torch::kBFloat16).device(d));
  at::Tensor b = torch::empty_like(a);
  const double ms = time_ms(d, 3, 10, 5, [&] { b.copy_(a); });
  return 2.0 * static_cast<double>(a.nbytes()) / (ms * 1e-3) / 1e9;
}

void kernel(const c10::Device& d, int64_t iters) {
  const double copy = copy_gb_s(d);
  std::printf("{\"bench\": \"copy\", \"gb_s\": %.1f, \"nominal_gb_s\": 4800}\n", copy);
  const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(d);
  const int64_t b = 8, c = 1024, heads = 16;
  for (bool dynamic : {false, true}) {
    for (int64_t t : {512, 2048, 8192}) {
      for (int64_t k : {3, 7, 15, 31, 63}) {
        const at::Tensor x = torch::randn({b, t, c}, opts).requires_grad_(true);
        const at::Tensor w = (dynamic ? torch::randn({b, t, heads, k}, opts) : torch::randn({heads, k}, opts))
                                 .requires_grad_(true);
        const at::Tensor up = torch::randn({b, t, c}, opts);
        const double bytes = 2.0 * static_cast<double>(x.nbytes()) + (dynamic ? static_cast<double>(w.nbytes()) : 0.0);
        for (auto path : {recast::ops::ConvPath::Cuda, recast::ops::ConvPath::LibTorch}) {
          recast::ops::TokenConvOptions o;
          o.causal = true, o.path = path;
          double fwd = 0;
          {
            const torch::NoGradGuard no_grad;
            fwd = time_ms(d, 3, iters, 5, [&] { recast::ops::token_conv(x, w, o); });
          }
          const double both = time_ms(d, 3, std::max<int64_t>(1, iters / 2), 5, [&] {
            x.mutable_grad() = at::Tensor();
            w.mutable_grad() = at::Tensor();
            (recast::ops::token_conv(x, w, o) * up).sum().backward();
          });
          const double gb_s = bytes / (fwd * 1e-3) / 1e9;
          std::printf(
              "{\"bench\": \"kernel\", \"kind\": \"%s\", \"path\": \"%s\", \"B\": %ld, \"T\": %ld, \"C\": %ld, "
              "\"K\": %ld, \"fwd_ms\": %.4f, \"fwd_bwd_ms\": %.4f, \"fwd_gb_s\": %.1f, \"of_copy\": %.3f, "
              "\"of_nominal\": %.3f}\n",
              dynamic ? "dynamic" : "lightweight", path == recast::ops::ConvPath::Cuda ? "cuda" : "libtorch",
              static_cast<long>(b), static_cast<long>(t), static_cast<long>(c), static_cast<long>(k), fwd, both,
              gb_s, gb_s / copy, gb_s / 4800.0);
          std::fflush(stdout);
        }
      }
    }
  }
}

void block(const c10::Device& d, int64_t iters) {
  const int64_t width = 768, heads = 12, hd = 64;
  const auto dt = torch::kBFloat16;
  recast::layers::AttentionSpec spec;
  spec.heads = spec.kv_heads = heads, spec.head_dim = hd, spec.causal = true;
  spec.scale = 1.0 / 8.0;
  recast::layers::ConvConfig cfg;
  cfg.kind = "lightweight";
  cfg.modules = {"block"};
  cfg.kernels = {31};
  auto conv = std::make_shared<recast::layers::ConvMixerImpl>(spec, cfg, width, width, true, 31);
  torch::nn::Linear qkv(torch::nn::LinearOptions(width, 3 * width)), out(width, width);
  conv->to(d, dt), qkv->to(d, dt), out->to(d, dt);
  for (int64_t t : {512, 2048, 8192, 32768}) {
    const at::Tensor x = torch::randn({1, t, width}, torch::TensorOptions().dtype(dt).device(d)).requires_grad_(true);
    const at::Tensor up = torch::randn_like(x);
    auto conv_block = [&] {
      const at::Tensor y = conv->mix(x, recast::ops::AttentionMask(), nullptr);
      (out(y.transpose(1, 2).reshape({1, t, width})) * up).sum().backward();
    };
    auto attention_block = [&] {
      auto parts = qkv(x).view({1, t, 3, heads, hd}).permute({2, 0, 3, 1, 4});
      recast::ops::AttentionMask causal;
      causal.causal = true;
      const at::Tensor y = recast::ops::attention(parts[0], parts[1], parts[2], causal);
      (out(y.transpose(1, 2).reshape({1, t, width})) * up).sum().backward();
    };
    const int64_t n = std::max<int64_t>(1, iters * 512 / t);
    const double conv_ms = time_ms(d, 3, n, 5, conv_block);
    const double attn_ms = time_ms(d, 3, n, 5, attention_block);
    std::printf(
        "{\"bench\": \"block\", \"T\": %ld, \"D\": %ld, \"conv_fwd_bwd_ms\": %.4f, \"attention_fwd_bwd_ms\": %.4f, "
        "\"attention_over_conv\": %.2f}\n",
        static_cast<long>(t), static_cast<long>(width), conv_ms, attn_ms, attn_ms / conv_ms);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_token_conv kernel|block [--device cuda] [--iters N]\n");
    return 2;
  }
  try {
    const c10::Device d = recast::select_device(sarg(argc, argv, "--device", "cuda"));
    const int64_t iters = arg(argc, argv, "--iters", 20);
    const std::string mode = argv[1];
    if (mode == "kernel") {
      kernel(d, iters);
    } else if (mode == "block") {
      block(d, iters);
    } else {
      std::fprintf(stderr, "bench_token_conv: unknown mode '%s'\n", argv[1]);
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_token_conv: %s\n", e.what());
    return 1;
  }
  return 0;
}
