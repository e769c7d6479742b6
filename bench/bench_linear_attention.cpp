// bench_linear_attention step|prefill [--device cuda] [--json]
//
//   step     one decoding step of linear attention for one layer (B=8, H=12,
//            k=64, dv=64 unless --batch/--heads/--features/--dv say otherwise):
//            the fused CUDA kernel vs the LibTorch recurrent form, bf16 inputs,
//            fp32 state. Time per step = wall time of --iters back-to-back
//            steps between two synchronisations, median of 5 repeats.
//   prefill  causal attention over T = 1k..32k tokens (B=1, H=12, d=64, k=64):
//            recast's chunked linear attention (chunk 64, 128, 256) vs
//            at::scaled_dot_product_attention causal (bf16, the fused kernel),
//            forward only (prefill) and forward + backward (training), median
//            of --iters runs after --warmup. The crossover is the first T from
//            which the fastest chunked form beats SDPA.
// Every measurement is one JSON line on stdout; both sides run in one process.

#include "recast/core/device.h"
#include "recast/ops/attention.h"
#include "recast/ops/linear_attention.h"
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

using Clock = std::chrono::steady_clock;

void step(int argc, char** argv, const c10::Device& dev) {
  const int64_t b = arg(argc, argv, "--batch", 8), h = arg(argc, argv, "--heads", 12),
                f = arg(argc, argv, "--features", 64), dv = arg(argc, argv, "--dv", 64),
                iters = arg(argc, argv, "--iters", 2000);
  torch::NoGradGuard no_grad;
  auto opts = torch::TensorOptions().device(dev).dtype(torch::kBFloat16);
  at::Tensor fq = torch::relu(torch::randn({b, h, 1, f}, opts)),
             fk = torch::relu(torch::randn({b, h, 1, f}, opts)), v = torch::randn({b, h, 1, dv}, opts);
  double us[2];
  for (int reference = 0; reference < 2; ++reference) {
    recast::ops::LinearAttentionOptions o;
    o.reference = reference == 1;
    recast::ops::LinearState state;
    us[reference] = 1000.0 * time_ms(dev, 50, iters, 5, [&] {
      recast::ops::linear_attention_recurrent(fq, fk, v, state, {}, o);
    });
  }
  std::printf(
      "{\"bench\": \"step\", \"batch\": %lld, \"heads\": %lld, \"features\": %lld, \"dv\": %lld, "
      "\"fused_us\": %.3f, \"libtorch_us\": %.3f, \"speedup\": %.2f}\n",
      static_cast<long long>(b), static_cast<long long>(h), static_cast<long long>(f),
      static_cast<long long>(dv), us[0], us[1], us[1] / us[0]);
}

void prefill(int argc, char** argv, const c10::Device& dev) {
  const int64_t b = arg(argc, argv, "--batch", 1), h = arg(argc, argv, "--heads", 12),
                d = arg(argc, argv, "--dv", 64), f = arg(argc, argv, "--features", 64),
                iters = arg(argc, argv, "--iters", 10), warmup = arg(argc, argv, "--warmup", 3);
  const int64_t max_t = arg(argc, argv, "--max-tokens", 32768);
  auto opts = torch::TensorOptions().device(dev).dtype(torch::kBFloat16);
  for (int64_t t = 1024; t <= max_t; t *= 2) {
    at::Tensor q = torch::randn({b, h, t, d}, opts), k = torch::randn({b, h, t, d}, opts),
               v = torch::randn({b, h, t, d}, opts);
    at::Tensor fq = torch::relu(torch::randn({b, h, t, f}, opts)),
               fk = torch::relu(torch::randn({b, h, t, f}, opts));
    for (bool backward : {false, true}) {
      for (auto* x : {&q, &k, &v, &fq, &fk}) x->set_requires_grad(backward);
      auto run = [&](const std::function<at::Tensor()>& fn) {
        return time_ms(dev, warmup, 1, iters, [&] {
          if (backward) {
            fn().sum().backward();
          } else {
            torch::NoGradGuard no_grad;
            fn();
          }
        });
      };
      recast::ops::AttentionMask causal;
      causal.causal = true;
      // recast's softmax attention: at::scaled_dot_product_attention, causal,
      // where LibTorch has it (>= 2.0), the explicit form elsewhere.
      const double sdpa = run([&] { return recast::ops::attention(q, k, v, causal); });
      double best = 1e30;
      int64_t best_chunk = 0;
      std::string chunks = "{";
      for (int64_t c : {64, 128, 256}) {
        recast::ops::LinearAttentionOptions o;
        o.chunk = c;
        const double ms = run([&] { return recast::ops::linear_attention_chunked(fq, fk, v, {}, o); });
        chunks += (c == 64 ? "\"" : ", \"") + std::to_string(c) + "\": " + std::to_string(ms);
        if (ms < best) best = ms, best_chunk = c;
      }
      chunks += "}";
      std::printf(
          "{\"bench\": \"prefill\", \"pass\": \"%s\", \"tokens\": %lld, \"batch\": %lld, "
          "\"heads\": %lld, \"sdpa_ms\": %.4f, \"chunked_ms\": %s, \"best_chunk\": %lld, "
          "\"chunked_over_sdpa\": %.3f}\n",
          backward ? "forward+backward" : "forward", static_cast<long long>(t),
          static_cast<long long>(b), static_cast<long long>(h), sdpa, chunks.c_str(),
          static_cast<long long>(best_chunk), best / sdpa);
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "step" && mode != "prefill") {
    std::fprintf(stderr, "usage: bench_linear_attention step|prefill [--device cuda] [options]\n");
    return 2;
  }
  try {
    const c10::Device dev = recast::select_device(sarg(argc, argv, "--device", "cuda"));
    if (mode == "step") step(argc, argv, dev);
    else prefill(argc, argv, dev);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_linear_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
