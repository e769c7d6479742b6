// bench_forward --model DIR [--arch NAME --set k=v ...] [--batch B] [--seq T]
//               [--device cuda] [--dtype bf16] [--warmup N] [--iters N]
//
// Forward throughput of a recast model (no grad), printed as one JSON line:
// {"ms_median": ..., "ms_min": ..., "items_per_s": ..., "unit": "tokens"|"images"}.
// Inputs are fresh random ids / pixels of the model's shape; time is wall clock
// around a synchronised forward, median over --iters after --warmup runs.
// tools/gpu_check_models.py runs it beside transformers / timm on the same weights.

#include "recast/core/device.h"
#include "recast/models/model.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::string model_path, arch, device = "cuda", dtype = "bf16";
  std::vector<std::string> sets;
  int64_t batch = 8, seq = 1024, warmup = 5, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--model")
      model_path = v;
    else if (a == "--arch")
      arch = v;
    else if (a == "--set")
      sets.push_back(v);
    else if (a == "--batch")
      batch = std::stoll(v);
    else if (a == "--seq")
      seq = std::stoll(v);
    else if (a == "--device")
      device = v;
    else if (a == "--dtype")
      dtype = v;
    else if (a == "--warmup")
      warmup = std::stoll(v);
    else if (a == "--iters")
      iters = std::stoll(v);
    else {
      std::fprintf(stderr, "bench_forward: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const c10::Device dev = recast::select_device(device);
    const c10::ScalarType type = recast::parse_dtype(dtype);
    recast::models::ModelPtr model =
        model_path.empty() ? recast::models::create_model(arch)
                           : recast::models::load_model(model_path, {arch, sets, true, {}});
    model->to(dev, type);
    model->eval();
    torch::NoGradGuard no_grad;
    const bool lm = model->task() == recast::models::Task::CausalLM;
    recast::models::Batch example = model->example_batch(batch, 1);
    auto make_batch = [&](uint64_t seed) {
      recast::models::Batch b;
      auto gen = at::detail::createCPUGenerator(seed);
      if (lm) {
        const int64_t vocab = recast::models::cfg_int(model->config(), "vocab_size");
        b.input_ids = at::randint(vocab, {batch, seq}, gen, at::kLong).to(dev);
      } else {
        b.pixel_values = at::randn(example.pixel_values.sizes(), gen, at::kFloat).to(dev, type);
      }
      return b;
    };
    auto sync = [&] {
      if (dev.is_cuda()) torch::cuda::synchronize();
    };
    std::vector<double> ms;
    for (int64_t i = 0; i < warmup + iters; ++i) {
      recast::models::Batch b = make_batch(100 + static_cast<uint64_t>(i));
      sync();
      auto t0 = std::chrono::steady_clock::now();
      at::Tensor logits = model->forward(b);
      sync();
      double elapsed =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= warmup) ms.push_back(elapsed);
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const double items = lm ? static_cast<double>(batch * seq) : static_cast<double>(batch);
    std::printf(
        "{\"ms_median\": %.4f, \"ms_min\": %.4f, \"items_per_s\": %.1f, \"unit\": \"%s\"}\n",
        median, ms.front(), items / (median / 1000.0), lm ? "tokens" : "images");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_forward: error: %s\n", e.what());
    return 1;
  }
}
