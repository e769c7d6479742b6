// The depthwise convolution over time (ops/token_conv.h): the reference loop
// over taps, the LibTorch path and, on a GPU, the CUDA kernels agree forward
// and backward for many kernel widths (1 .. 127, longer than the sequence
// too), odd lengths, batches, causal and centred windows, shared, dynamic and
// dilated kernels; decoding from a window of history equals the full output;
// a CUDA request that cannot run falls back and says so.

#include "recast/core/log.h"
#include "recast/ops/token_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

using ops::ConvPath;

struct Case {
  int64_t kernel, dilation, groups;
  bool causal, dynamic;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int64_t k : {1, 2, 3, 9, 31, 64, 127}) {
    for (bool causal : {false, true}) {
      out.push_back({k, 1, 4, causal, false});   // lightweight: 4 heads over 12 channels
      out.push_back({k, 1, 3, causal, true});    // dynamic: 3 heads
      out.push_back({k, k > 9 ? 1 : 3, 12, causal, false});  // dilated, depthwise
    }
  }
  return out;
}

std::string name(const Case& c) {
  return "K=" + std::to_string(c.kernel) + " d=" + std::to_string(c.dilation) + " G=" +
         std::to_string(c.groups) + (c.causal ? " causal" : " centred") + (c.dynamic ? " dynamic" : "");
}

struct Result {
  at::Tensor y, gx, gw;
};

// y and the gradients of sum(y * up) w.r.t. x and the kernel along `path`.
Result run(const at::Tensor& x0, const at::Tensor& w0, const at::Tensor& up, const Case& c,
           ConvPath path, int64_t history = 0) {
  at::Tensor x = x0.detach().clone().requires_grad_(true);
  at::Tensor w = w0.detach().clone().requires_grad_(true);
  ops::TokenConvOptions o;
  o.dilation = c.dilation, o.causal = c.causal, o.history = history, o.path = path;
  at::Tensor y = ops::token_conv(x, w, o);
  (y * up).sum().backward();
  return {y.detach(), x.grad(), w.grad()};
}

double rel(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor a64 = a.to(at::kCPU, at::kDouble), b64 = b.to(at::kCPU, at::kDouble);
  return ((a64 - b64).abs().max() / b64.abs().max().clamp_min(1e-30)).item<double>();
}

TEST(TokenConv, ReferenceAndLibTorchAgreeForwardAndBackward) {
  torch::manual_seed(0);
  const int64_t b = 2, t = 37, ch = 12;
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    const at::Tensor x = torch::randn({b, t, ch}, torch::kDouble);
    const at::Tensor w = c.dynamic ? torch::randn({b, t, c.groups, c.kernel}, torch::kDouble)
                                   : torch::randn({c.groups, c.kernel}, torch::kDouble);
    const at::Tensor up = torch::randn({b, t, ch}, torch::kDouble);
    const Result ref = run(x, w, up, c, ConvPath::Reference);
    const Result lib = run(x, w, up, c, ConvPath::LibTorch);
    EXPECT_LT(rel(lib.y, ref.y), 1e-12);
    EXPECT_LT(rel(lib.gx, ref.gx), 1e-12);
    EXPECT_LT(rel(lib.gw, ref.gw), 1e-12);
  }
}

// The definition worked by hand on one channel: causal K = 3, d = 2 reads
// x[t], x[t - 2], x[t - 4]; centred K = 4 reads x[t - 1] .. x[t + 2].
TEST(TokenConv, WindowsAsDefined) {
  const at::Tensor x = torch::arange(1, 9, torch::kDouble).view({1, 8, 1});
  ops::TokenConvOptions causal;
  causal.causal = true, causal.dilation = 2, causal.path = ConvPath::Reference;
  const at::Tensor w = torch::tensor({100.0, 10.0, 1.0}, torch::kDouble).view({1, 3});
  // y[7] = 100 x[3] + 10 x[5] + x[7] (x[i] = i + 1)
  EXPECT_DOUBLE_EQ(ops::token_conv(x, w, causal)[0][7][0].item<double>(), 100 * 4 + 10 * 6 + 8);
  EXPECT_DOUBLE_EQ(ops::token_conv(x, w, causal)[0][1][0].item<double>(), 2);
  ops::TokenConvOptions centred;
  centred.path = ConvPath::LibTorch;
  const at::Tensor w4 = torch::tensor({1000.0, 100.0, 10.0, 1.0}, torch::kDouble).view({1, 4});
  // y[0] = 100 x[0] + 10 x[1] + x[2]: x[-1] is zero padding.
  EXPECT_DOUBLE_EQ(ops::token_conv(x, w4, centred)[0][0][0].item<double>(), 100 + 20 + 3);
  EXPECT_DOUBLE_EQ(ops::token_conv(x, w4, centred)[0][7][0].item<double>(), 1000 * 7 + 100 * 8);
}

// Decoding: the last d (K - 1) inputs as history give the rows the full
// causal conv gives for the new tokens.
TEST(TokenConv, HistoryEqualsTheTailOfTheFullOutput) {
  torch::manual_seed(1);
  for (ConvPath path : {ConvPath::Reference, ConvPath::LibTorch}) {
    for (const Case& c : cases()) {
      if (!c.causal) continue;
      SCOPED_TRACE(name(c));
      const int64_t t = 40, fresh = 3, keep = c.dilation * (c.kernel - 1);
      const at::Tensor x = torch::randn({2, t, 12}, torch::kDouble);
      const at::Tensor w = c.dynamic ? torch::randn({2, t, c.groups, c.kernel}, torch::kDouble)
                                     : torch::randn({c.groups, c.kernel}, torch::kDouble);
      ops::TokenConvOptions o;
      o.causal = true, o.dilation = c.dilation, o.path = path;
      const at::Tensor full = ops::token_conv(x, w, o).narrow(1, t - fresh, fresh);
      // The window: the last `keep` inputs before the new tokens, zeros before the start.
      const at::Tensor padded = at::constant_pad_nd(x, {0, 0, keep, 0});
      const at::Tensor in = padded.narrow(1, padded.size(1) - fresh - keep, fresh + keep);
      o.history = keep;
      const at::Tensor wn = c.dynamic ? w.narrow(1, t - fresh, fresh) : w;
      EXPECT_LT(rel(ops::token_conv(in, wn, o), full), 1e-12);
    }
  }
}

TEST(TokenConv, BadShapesAreNamed) {
  const at::Tensor x = torch::randn({2, 5, 6});
  auto error_of = [](auto f) {
    try {
      f();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of([&] { ops::token_conv(x, torch::randn({4, 3})); }).find("do not split into 4"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::token_conv(x, torch::randn({2, 4, 3, 3})); }).find("dynamic weight"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ops::token_conv(x.view({10, 6}), torch::randn({2, 3})); }).find("[B, T, C]"),
            std::string::npos);
}

// Asking for the CUDA path where it cannot run (CPU tensors here; or a build
// without the kernels) takes the LibTorch path and says so at debug level.
TEST(TokenConv, ACudaRequestThatCannotRunFallsBackAndSaysSo) {
  const at::Tensor x = torch::randn({2, 9, 8});
  const at::Tensor w = torch::randn({2, 5});
  ops::TokenConvOptions o;
  o.causal = true;
  o.path = ConvPath::LibTorch;
  const at::Tensor expected = ops::token_conv(x, w, o);
  o.path = ConvPath::Cuda;
  const log::Level saved = log::level();
  log::set_level(log::Level::Debug);
  ::testing::internal::CaptureStderr();
  const at::Tensor got = ops::token_conv(x, w, o);
  const std::string err = ::testing::internal::GetCapturedStderr();
  log::set_level(saved);
  EXPECT_TRUE(torch::equal(got, expected));
  EXPECT_NE(err.find("token conv: CUDA path not taken ("), std::string::npos) << err;
  EXPECT_NE(err.find("LibTorch path"), std::string::npos) << err;
  std::string why;
  EXPECT_EQ(ops::token_conv_path(x, w, o, &why), "libtorch");
  EXPECT_FALSE(why.empty());
}

// On a GPU (recast built with the kernels): the CUDA kernels against the
// reference in fp64 on the CPU, in fp64, fp32 and bf16, forward and backward,
// with spans that fit the shared-memory tile and ones that do not.
TEST(TokenConv, CudaKernelsAgreeWithTheReference) {
  if (!ops::token_conv_has_cuda() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "no CUDA kernels or no GPU here (runs on the GPU machine)";
  }
  torch::manual_seed(2);
  std::vector<Case> all = cases();
  all.push_back({7, 64, 16, true, false});   // span 385: global-memory kernels
  all.push_back({9, 100, 4, false, true});   // dynamic, span 801
  // 2 heads over 256 channels: a head spans two 64-channel tiles.
  all.push_back({31, 1, 2, true, true});
  all.push_back({31, 1, 2, false, false});
  for (const Case& c : all) {
    for (int64_t t : {37, 300}) {
      SCOPED_TRACE(name(c) + " T=" + std::to_string(t));
      const int64_t b = 2, ch = c.groups == 16 ? 80 : c.groups == 2 ? 256 : 96;
      const int64_t groups = c.groups == 12 ? ch : c.groups;  // the dilated cases: depthwise
      const at::Tensor x = torch::randn({b, t, ch}, torch::kDouble);
      const at::Tensor w = c.dynamic ? torch::randn({b, t, groups, c.kernel}, torch::kDouble)
                                     : torch::randn({groups, c.kernel}, torch::kDouble);
      const at::Tensor up = torch::randn({b, t, ch}, torch::kDouble);
      const Result ref = run(x, w, up, c, ConvPath::Reference);
      for (auto dtype : {torch::kDouble, torch::kFloat, torch::kBFloat16}) {
        const double tol = dtype == torch::kDouble ? 1e-12 : dtype == torch::kFloat ? 1e-5 : 3e-2;
        auto on_gpu = [&](const at::Tensor& v) { return v.to(torch::kCUDA, dtype); };
        std::string why;
        ops::TokenConvOptions o;
        o.path = ConvPath::Cuda;
        ASSERT_EQ(ops::token_conv_path(on_gpu(x), on_gpu(w), o, &why), "cuda") << why;
        const Result gpu = run(on_gpu(x), on_gpu(w), on_gpu(up), c, ConvPath::Cuda);
        EXPECT_LT(rel(gpu.y, ref.y), tol) << dtype;
        EXPECT_LT(rel(gpu.gx, ref.gx), tol) << dtype;
        EXPECT_LT(rel(gpu.gw, ref.gw), dtype == torch::kBFloat16 ? 6e-2 : tol) << dtype;
      }
    }
  }
}

}  // namespace
}  // namespace recast::testing
