// bench_conv_attention [--device cuda] [--batch 64] [--iters 10]
//
// T-CNN's layer against the convolution it replaces, forward + backward, at
// 7x7, 14x14, 28x28, 56x56 and C = 256, 512 (3x3, stride 1), bf16 weights
// and inputs on CUDA. ConvAttention runs with its gates open (0.5), so the content
// attention is computed as in fine-tuning; the hard positional branch is a
// convolution with the taps scaled (layers/conv_attention.h). Median of
// --iters runs after 3 warm-up runs; both sides in one process; one JSON line
// per size (an out-of-memory size says so and the run goes on).

#include "recast/core/device.h"
#include "recast/layers/conv_attention.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

double median_ms(const c10::Device& d, int64_t iters, const std::function<void()>& fn) {
  auto sync = [&] {
    if (d.is_cuda()) torch::cuda::synchronize();
  };
  for (int i = 0; i < 3; ++i) fn();
  sync();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cuda";
  int64_t batch = 64, iters = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--device") device = argv[i + 1];
    else if (a == "--batch") batch = std::stoll(argv[i + 1]);
    else if (a == "--iters") iters = std::stoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_conv_attention: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const c10::Device dev = recast::select_device(device);
    const auto dtype = dev.is_cuda() ? torch::kBFloat16 : torch::kFloat;
    for (int64_t c : {256, 512}) {
      for (int64_t size : {7, 14, 28, 56}) {
        std::printf("{\"channels\": %lld, \"size\": %lld, \"batch\": %lld", static_cast<long long>(c),
                    static_cast<long long>(size), static_cast<long long>(batch));
        try {
          auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(c, c, 3).padding(1).bias(false));
          recast::layers::ConvAttentionOptions o;
          o.in = c, o.out = c, o.kernel = 3;
          recast::layers::ConvAttention ca(o);
          {
            torch::NoGradGuard no_grad;
            ca->gate.fill_(0.5);
          }
          conv->to(dev, dtype);
          ca->to(dev, dtype);
          const at::Tensor x = torch::randn({batch, c, size, size}, torch::TensorOptions().device(dev).dtype(dtype))
                                   .requires_grad_(true);
          const double conv_ms = median_ms(dev, iters, [&] { conv(x).sum().backward(); });
          const double attn_ms = median_ms(dev, iters, [&] { ca(x).sum().backward(); });
          std::printf(", \"conv2d_ms\": %.3f, \"conv_attention_ms\": %.3f, \"ratio\": %.2f}\n", conv_ms,
                      attn_ms, attn_ms / conv_ms);
        } catch (const std::exception& e) {
          std::string what = e.what();
          what = what.substr(0, what.find('\n'));
          std::replace(what.begin(), what.end(), '"', '\'');
          std::printf(", \"error\": \"%s\"}\n", what.c_str());
        }
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_conv_attention: %s\n", e.what());
    return 1;
  }
  return 0;
}
