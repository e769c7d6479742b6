// bench_conv_attention [--device cuda] [--batch 64] [--iters 10]
//
// T-CNN's layer against the convolution it replaces, forward + backward, at
// 7x7, 14x14, 28x28, 56x56 and C = 256, 512 (3x3, stride 1), bf16 weights
// and inputs on CUDA. ConvAttention runs with its gates open (0.5), so the content
// attention is computed as in fine-tuning; the hard positional branch is a
// convolution with the taps scaled (layers/conv_attention.h). Each content
// path (ContentPath) is timed, with its output's relative difference from
// values_first's. Median of --iters runs after 3 warm-up runs; every side in
// one process; one JSON line per size (an out-of-memory path or size says so
// and the run goes on).

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

// An exception's first line, made safe inside a JSON string.
std::string first_line(const char* what) {
  std::string s = what;
  s = s.substr(0, s.find('\n'));
  std::replace(s.begin(), s.end(), '"', '\'');
  return s;
}

const std::pair<recast::layers::ContentPath, const char*> kPaths[] = {
    {recast::layers::ContentPath::ValuesFirst, "values_first"},
    {recast::layers::ContentPath::Chunked, "chunked"},
    {recast::layers::ContentPath::Automatic, "automatic"}};

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
          conv->to(dev, dtype);
          const at::Tensor x = torch::randn({batch, c, size, size}, torch::TensorOptions().device(dev).dtype(dtype))
                                   .requires_grad_(true);
          const double conv_ms = median_ms(dev, iters, [&] { conv(x).sum().backward(); });
          std::printf(", \"conv2d_ms\": %.3f", conv_ms);
          std::fflush(stdout);
          at::Tensor first;  // values_first's output: the others must agree with it
          for (const auto& [path, name] : kPaths) {
            recast::layers::ConvAttentionOptions o;
            o.in = c, o.out = c, o.kernel = 3, o.content = path;
            torch::manual_seed(0);  // the same weights for every path
            recast::layers::ConvAttention ca(o);
            {
              torch::NoGradGuard no_grad;
              ca->gate.fill_(0.5);
            }
            ca->to(dev, dtype);
            try {
              const double ms = median_ms(dev, iters, [&] { ca(x).sum().backward(); });
              torch::NoGradGuard no_grad;
              const at::Tensor y = ca(x.detach()).to(torch::kFloat);
              if (!first.defined()) first = y;
              const double diff = ((y - first).abs().max() / first.abs().max()).item<double>();
              std::printf(", \"%s_ms\": %.3f, \"%s_ratio\": %.2f, \"%s_rel_diff\": %.2e", name, ms, name,
                          ms / conv_ms, name, diff);
            } catch (const std::exception& e) {
              std::printf(", \"%s_error\": \"%s\"", name, first_line(e.what()).c_str());
            }
            std::fflush(stdout);
          }
          std::printf("}\n");
        } catch (const std::exception& e) {
          std::printf(", \"error\": \"%s\"}\n", first_line(e.what()).c_str());
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
