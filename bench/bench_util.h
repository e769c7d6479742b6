#pragma once

// What the benchmark programs share: device synchronisation, timing (the
// median over repeats of the mean of back-to-back calls between two
// synchronisations) and their `--name value` arguments.

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

inline void sync(const c10::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index() < 0 ? 0 : d.index());
}

// Median over `repeats` of the mean time of `iters` calls, in milliseconds.
inline double time_ms(const c10::Device& d, int64_t warmup, int64_t iters, int64_t repeats,
                      const std::function<void()>& fn) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  sync(d);
  std::vector<double> ms;
  for (int64_t r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < iters; ++i) fn();
    sync(d);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() /
                 static_cast<double>(iters));
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

inline int64_t arg(int argc, char** argv, const std::string& name, int64_t fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (name == argv[i]) return std::stoll(argv[i + 1]);
  return fallback;
}

inline std::string sarg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 2; i + 1 < argc; ++i)
    if (name == argv[i]) return argv[i + 1];
  return fallback;
}

}  // namespace
