// bench_blas [N...]: fp32 matrix-product throughput of LibTorch's CPU BLAS at
// sizes N x N x N (default 256 512 1024 2048). Run it once with the default
// BLAS and once with another (LD_LIBRARY_PATH) to compare; see
// bench/results/blas-*.md. Median of repeated runs after a warm-up.

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {256, 512, 1024, 2048};
  torch::manual_seed(0);
  std::printf("threads=%d\n", at::get_num_threads());
  std::printf("%6s %12s %12s\n", "n", "median_ms", "GFLOP/s");
  for (int64_t n : sizes) {
    auto a = torch::randn({n, n});
    auto b = torch::randn({n, n});
    auto c = torch::mm(a, b);  // warm-up
    std::vector<double> times;
    double total = 0;
    while (times.size() < 5 || (total < 1.0 && times.size() < 200)) {
      auto t0 = std::chrono::steady_clock::now();
      c = torch::mm(a, b);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      times.push_back(s);
      total += s;
    }
    std::sort(times.begin(), times.end());
    double median = times[times.size() / 2];
    std::printf("%6lld %12.3f %12.1f\n", static_cast<long long>(n), median * 1e3,
                2.0 * n * n * n / median / 1e9);
  }
  return 0;
}
