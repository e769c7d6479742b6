// bench_factorized linear [--device cpu|cuda] [--dtype fp32|bf16] [--dims 768,4096]
//                         [--tokens 1,128,8192] [--iters N]
// bench_factorized model --model DIR [--device ...] [--dtype ...] [--batch B] [--seq T]
//
//   linear  y = x W^T (one at::linear, W d x d) against y = (x V) U^T (two
//           at::linear through rank r = d/16, d/8, d/4, d/2), fresh random
//           inputs, side by side in one process: median over 5 repeats of the
//           mean of --iters calls after a warm-up, the device synchronised
//           before each clock read. Also the FactorizedLinear layer with its
//           automatic dispatch (it runs dense where factorized_is_faster says
//           the two products lose), so the table shows what the rule chose.
//   model   forward latency (no grad) and CUDA peak memory of a checkpoint on a
//           batch of the shape its example_batch has (--batch, --seq for
//           language models), for the end-to-end cost of a compressed model.
// One JSON line per measurement on stdout.

#include "recast/core/device.h"
#include "recast/layers/factorized.h"
#include "recast/models/model.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double time_us(c10::Device d, int64_t warmup, int64_t iters, const std::function<void()>& fn) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  recast::synchronize(d);
  std::vector<double> us;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < iters; ++i) fn();
    recast::synchronize(d);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
                 static_cast<double>(iters));
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

std::string sarg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (name == argv[i]) return argv[i + 1];
  return fallback;
}

std::vector<int64_t> list_arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  std::vector<int64_t> out;
  std::stringstream in(sarg(argc, argv, name, fallback));
  for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
  return out;
}

c10::ScalarType dtype_of(const std::string& s) {
  if (s == "bf16") return torch::kBFloat16;
  if (s == "fp32") return torch::kFloat;
  throw std::runtime_error("--dtype: expected fp32 or bf16, found " + s);
}

void linear(int argc, char** argv, c10::Device dev, c10::ScalarType dtype) {
  const auto dims = list_arg(argc, argv, "--dims", "768,4096");
  const auto token_counts = list_arg(argc, argv, "--tokens", "1,128,8192");
  const int64_t iters_arg = std::stoll(sarg(argc, argv, "--iters", "0"));
  torch::NoGradGuard no_grad;
  const auto opts = torch::TensorOptions().device(dev).dtype(dtype);
  for (int64_t d : dims) {
    const at::Tensor w = torch::randn({d, d}, opts) / std::sqrt(static_cast<double>(d));
    for (int64_t m : token_counts) {
      const at::Tensor x = torch::randn({m, d}, opts);
      // Enough calls for ~20 ms of dense work per repeat on this device.
      const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(d * d);
      const double rate = dev.is_cuda() ? 3e14 : 1e11;
      const int64_t iters = iters_arg > 0 ? iters_arg
                                          : std::clamp<int64_t>(static_cast<int64_t>(0.02 * rate / flops), 3, 2000);
      const double dense = time_us(dev, 3, iters, [&] { at::linear(x, w); });
      for (int64_t div : {16, 8, 4, 2}) {
        const int64_t r = d / div;
        const at::Tensor v = torch::randn({r, d}, opts) / std::sqrt(static_cast<double>(d));
        const at::Tensor u = torch::randn({d, r}, opts) / std::sqrt(static_cast<double>(r));
        const double fact = time_us(dev, 3, iters, [&] { at::linear(at::linear(x, v), u); });
        recast::layers::FactorizedLinearOptions lo;
        lo.in = d, lo.out = d, lo.rank = r, lo.bias = false;
        recast::layers::FactorizedLinear layer(lo);
        layer->to(dev, dtype);
        const double automatic = time_us(dev, 3, iters, [&] { layer(x); });
        const bool chose = recast::layers::factorized_is_faster(d, d, r, m, dev);
        std::printf(
            "{\"bench\": \"linear\", \"device\": \"%s\", \"dtype\": \"%s\", \"d\": %lld, "
            "\"tokens\": %lld, \"rank\": %lld, \"flop_ratio\": %.3f, \"dense_us\": %.3f, "
            "\"factorized_us\": %.3f, \"speedup\": %.3f, \"layer_auto_us\": %.3f, "
            "\"auto_chose\": \"%s\", \"dense_tflops\": %.3f}\n",
            dev.is_cuda() ? "cuda" : "cpu", dtype == torch::kBFloat16 ? "bf16" : "fp32",
            static_cast<long long>(d), static_cast<long long>(m), static_cast<long long>(r),
            static_cast<double>(d) / (2.0 * static_cast<double>(r)), dense, fact, dense / fact,
            automatic, chose ? "factorized" : "dense", flops / (dense * 1e-6) / 1e12);
        std::fflush(stdout);
      }
    }
  }
}

void model(int argc, char** argv, c10::Device dev, c10::ScalarType dtype) {
  const std::string dir = sarg(argc, argv, "--model", "");
  if (dir.empty()) throw std::runtime_error("model: --model DIR is required");
  const int64_t batch = std::stoll(sarg(argc, argv, "--batch", "32"));
  const int64_t seq = std::stoll(sarg(argc, argv, "--seq", "256"));
  auto m = recast::models::load_model(dir);
  m->to(dev, dtype);
  m->eval();
  recast::models::Batch b = m->example_batch(batch, 0);
  if (b.input_ids.defined()) {
    const int64_t vocab = b.input_ids.max().item<int64_t>() + 1;
    b.input_ids = torch::randint(std::max<int64_t>(vocab, 2), {batch, seq}, torch::kLong);
  }
  if (b.input_ids.defined()) b.input_ids = b.input_ids.to(dev);
  if (b.pixel_values.defined()) b.pixel_values = b.pixel_values.to(dev, dtype);
  int64_t params = 0;
  for (const auto& p : m->parameters()) params += p.numel();
  torch::NoGradGuard no_grad;
  recast::take_peak_allocated_mb(dev);
  const double us = time_us(dev, 3, 10, [&] { m->forward(b); });
  const double peak = recast::take_peak_allocated_mb(dev);
  std::printf(
      "{\"bench\": \"model\", \"model\": \"%s\", \"device\": \"%s\", \"dtype\": \"%s\", "
      "\"batch\": %lld, \"seq\": %lld, \"params\": %lld, \"forward_ms\": %.3f, \"peak_mb\": %.1f}\n",
      dir.c_str(), dev.is_cuda() ? "cuda" : "cpu", dtype == torch::kBFloat16 ? "bf16" : "fp32",
      static_cast<long long>(batch), static_cast<long long>(b.input_ids.defined() ? seq : 0),
      static_cast<long long>(params), us / 1000.0, peak);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw std::runtime_error("usage: bench_factorized linear|model [options]");
    const c10::Device dev = recast::select_device(sarg(argc, argv, "--device", "cpu"));
    const c10::ScalarType dtype = dtype_of(sarg(argc, argv, "--dtype", "fp32"));
    recast::set_tf32(false);
    const std::string what = argv[1];
    if (what == "linear") {
      linear(argc, argv, dev, dtype);
    } else if (what == "model") {
      model(argc, argv, dev, dtype);
    } else {
      throw std::runtime_error("unknown benchmark " + what + " (linear, model)");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_factorized: %s\n", e.what());
    return 1;
  }
  return 0;
}
