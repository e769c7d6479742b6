// Softmax attention: the fused path (SDPA on LibTorch >= 2) and the reference
// path against a loop over queries and keys in fp64, for grouped-query heads,
// causal masks with a cache offset, and key padding; forward and backward.

#include "recast/core/version.h"
#include "recast/ops/attention.h"
#if RECAST_WITH_CUDA
#include "recast/ops/cuda/attention_decode.h"
#endif

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace recast::testing {
namespace {

// out[b,h,i] = sum_j softmax_j(q.k_j * s over visible j) v_j, one element at a time.
at::Tensor loop_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const ops::AttentionMask& m) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), S = k.size(2);
  const int64_t groups = H / k.size(1);
  const at::Tensor qd = q.to(at::kDouble), kd = k.to(at::kDouble), vd = v.to(at::kDouble);
  auto qa = qd.accessor<double, 4>();
  auto ka = kd.accessor<double, 4>();
  auto va = vd.accessor<double, 4>();
  at::Tensor out = at::zeros({B, H, T, D}, at::kDouble);
  auto oa = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> w(S, 0.0);
        double top = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          bool visible = !m.causal || j <= m.query_offset + i;
          if (m.key_padding.defined()) visible = visible && m.key_padding[b][j].item<bool>();
          if (!visible) {
            w[j] = NAN;
            continue;
          }
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qa[b][h][i][d] * ka[b][h / groups][j][d];
          w[j] = dot / std::sqrt(static_cast<double>(D));
          top = std::max(top, w[j]);
        }
        double total = 0;
        for (auto& x : w) total += (x = std::isnan(x) ? 0.0 : std::exp(x - top));
        for (int64_t j = 0; j < S; ++j) {
          for (int64_t d = 0; d < D; ++d) oa[b][h][i][d] += w[j] / total * va[b][h / groups][j][d];
        }
      }
    }
  }
  return out;
}

double max_error(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

TEST(Attention, PathsAgreeWithALoopForMasksGroupsAndOffsets) {
  torch::manual_seed(3);
  struct Case {
    int64_t heads, kv_heads, tq, tk;
    bool causal, padding;
  };
  for (const Case& c :
       {Case{4, 4, 7, 7, false, false}, Case{4, 2, 7, 7, true, false}, Case{6, 2, 5, 5, true, true},
        Case{4, 1, 1, 9, true, true}, Case{4, 2, 3, 8, true, false}}) {
    at::Tensor q = at::randn({2, c.heads, c.tq, 8});
    at::Tensor k = at::randn({2, c.kv_heads, c.tk, 8});
    at::Tensor v = at::randn({2, c.kv_heads, c.tk, 8});
    ops::AttentionMask m;
    m.causal = c.causal;
    m.query_offset = c.tk - c.tq;
    if (c.padding) {
      m.key_padding = at::ones({2, c.tk}, at::kBool);
      m.key_padding[1].slice(0, c.tk - 2).fill_(false);  // right padding on row 1
    }
    at::Tensor expected = loop_attention(q, k, v, m);
    at::Tensor reference = ops::attention_reference(q, k, v, m);
    at::Tensor fused = ops::attention(q, k, v, m);
    if (c.tq == 1) {
      EXPECT_LE(max_error(ops::attention_decode(q, k, v, m), expected), 1e-5);
    }
    // Padded queries of row 1 see only real keys, so every row is well defined.
    EXPECT_LE(max_error(reference, expected), 1e-5);
    EXPECT_LE(max_error(fused, expected), 1e-5);
  }
}

// A fixed-shape step: the query at buffer index `slot` over a whole buffer
// whose unwritten and padded keys `key_padding` masks (and a window by slot)
// equals the query over the keys held, with a T5-style bias and GQA.
TEST(Attention, FixedShapeStepEqualsTheKeysHeld) {
  torch::manual_seed(4);
  const int64_t cap = 12, slot = 7;
  for (int64_t window : {0, 3}) {
    at::Tensor q = at::randn({2, 4, 1, 8});
    at::Tensor k = at::randn({2, 2, cap, 8}), v = at::randn({2, 2, cap, 8});
    at::Tensor bias = at::randn({1, 4, 1, cap});
    at::Tensor real = at::zeros({2, cap}, at::kBool);
    real.narrow(1, 0, slot + 1).fill_(true);
    real[1].narrow(0, 0, 2).fill_(false);  // row 1 left-padded
    ops::AttentionMask fixed;
    fixed.causal = true, fixed.key_padding = real, fixed.window = window, fixed.bias = bias;
    fixed.slot = at::full({1}, slot, at::kLong);
    ops::AttentionMask held;
    held.causal = true, held.query_offset = slot, held.window = window;
    held.key_padding = real.narrow(1, 0, slot + 1), held.bias = bias.narrow(3, 0, slot + 1);
    const at::Tensor expected = ops::attention_reference(q, k.narrow(2, 0, slot + 1),
                                                         v.narrow(2, 0, slot + 1), held);
    EXPECT_LE(max_error(ops::attention(q, k, v, fixed), expected), 1e-5) << "window " << window;
    EXPECT_LE(max_error(ops::attention_reference(q, k, v, fixed), expected), 1e-5);
  }
}

// The CUDA decode kernels (flash-decoding: chunks, then their combination)
// against the reference: fp32 / bf16 / fp16, head sizes that are and are not
// multiples of 32 (and dv != d), GQA, key padding, causal offsets with a
// window, the fixed-shape slot with a window, keys longer than one chunk,
// strided views of a larger cache buffer, and inside a CUDA graph.
TEST(Attention, CudaDecodeKernelsMatchTheReference) {
#if RECAST_WITH_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (runs on the GPU machine)";
  torch::manual_seed(11);
  const auto gpu = at::TensorOptions().device(at::kCUDA);
  struct Case {
    int64_t b, h, hkv, t, d, dv;
    bool padding, causal, slot;
    int64_t window;
  };
  for (const Case& c : {Case{2, 4, 4, 9, 64, 64, false, false, false, 0}, Case{2, 8, 2, 300, 80, 48, true, true, false, 0},
                        Case{1, 12, 12, 5000, 64, 64, false, true, false, 700},
                        Case{3, 6, 3, 2100, 128, 128, true, false, true, 0},
                        Case{2, 4, 1, 1500, 32, 32, true, false, true, 257}}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(::testing::Message() << "t " << c.t << " d " << c.d << " dtype " << dtype);
      // k, v: views of a buffer with room for more keys than held.
      at::Tensor kbuf = at::randn({c.b, c.hkv, c.t + 37, c.d}, gpu).to(dtype);
      at::Tensor vbuf = at::randn({c.b, c.hkv, c.t + 37, c.dv}, gpu).to(dtype);
      at::Tensor k = kbuf.narrow(2, 0, c.t), v = vbuf.narrow(2, 0, c.t);
      at::Tensor q = at::randn({c.b, c.h, 1, c.d}, gpu).to(dtype);
      ops::AttentionMask m;
      const int64_t slot = c.t - 11;
      if (c.padding) {
        m.key_padding = at::rand({c.b, c.t}, gpu) > 0.3;
        m.key_padding.narrow(1, slot, 1).fill_(true);  // the query's own key
      }
      if (c.causal) m.causal = true, m.query_offset = slot, m.window = c.window;
      if (c.slot) {
        at::Tensor held = at::arange(c.t, gpu.dtype(at::kLong)) <= slot;
        m.key_padding = (m.key_padding.defined() ? m.key_padding : at::ones({c.b, c.t}, gpu.dtype(at::kBool))) &
                        held.unsqueeze(0);
        m.causal = true, m.window = c.window;
        m.slot = at::full({1}, slot, gpu.dtype(at::kLong));
      }
      const double s = 1.0 / std::sqrt(static_cast<double>(c.d));
      const at::Tensor want = ops::attention_reference(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), m, s);
      const ops::cuda::DecodeMask dm{m.key_padding, m.slot, m.causal, m.query_offset, m.key_offset, m.window};
      ASSERT_TRUE(ops::cuda::attention_decode_supported(q, k, v, dm));
      const at::Tensor got = ops::cuda::attention_decode(q, k, v, dm, s);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.b, c.h, 1, c.dv}));
      const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
      EXPECT_LE(max_error(got, want), tol * std::max(1.0, want.abs().max().item<double>()));
      // ops::attention takes the kernel on CUDA (no gradient, no bias) when
      // RECAST_DECODE_KERNEL=1 (gpu-checks.sh decode-kernel runs it so).
      const char* on = std::getenv("RECAST_DECODE_KERNEL");
      if (on != nullptr && std::string(on) == "1") {
        torch::NoGradGuard no_grad;
        EXPECT_TRUE(ops::attention(q, k, v, m).equal(got));
      }
    }
  }
  // The slot and the key mask are read from device memory at each launch
  // (what a replayed CUDA graph relies on; FixedSteps.CudaGraphReplaysTheEagerSteps
  // replays it): moving them moves the result as the reference's.
  at::Tensor k = at::randn({1, 2, 64, 32}, gpu), v = at::randn({1, 2, 64, 32}, gpu), q = at::randn({1, 4, 1, 32}, gpu);
  at::Tensor valid = at::zeros({1, 64}, gpu.dtype(at::kBool));
  at::Tensor slot = at::zeros({1}, gpu.dtype(at::kLong));
  const ops::cuda::DecodeMask dm{valid, slot, true, 0, 0, 5};
  for (int64_t at_slot : {9, 19}) {
    valid.narrow(1, 0, at_slot + 1).fill_(true);
    slot.fill_(at_slot);
    ops::AttentionMask m;
    m.causal = true, m.key_padding = valid.clone(), m.window = 5, m.slot = slot.clone();
    EXPECT_LE(max_error(ops::cuda::attention_decode(q, k, v, dm, 0.2), ops::attention_reference(q, k, v, m, 0.2)), 1e-5);
  }
#else
  GTEST_SKIP() << "built without the CUDA kernels";
#endif
}

TEST(Attention, GradientsOfBothPathsAgree) {
  torch::manual_seed(4);
  at::Tensor q = torch::randn({2, 4, 6, 8}, torch::requires_grad());
  at::Tensor k = torch::randn({2, 2, 6, 8}, torch::requires_grad());
  at::Tensor v = torch::randn({2, 2, 6, 8}, torch::requires_grad());
  ops::AttentionMask m;
  m.causal = true;
  at::Tensor w = at::randn({2, 4, 6, 8});
  auto grads = [&](bool fused) {
    at::Tensor out = fused ? ops::attention(q, k, v, m) : ops::attention_reference(q, k, v, m);
    return torch::autograd::grad({(out * w).sum()}, {q, k, v});
  };
  auto a = grads(true), b = grads(false);
  for (size_t i = 0; i < 3; ++i) EXPECT_LE(max_error(a[i], b[i]), 1e-5) << i;
}

TEST(Attention, FullyMaskedRowsStayFinite) {
  at::Tensor q = at::randn({1, 2, 3, 4}), k = at::randn({1, 2, 3, 4}), v = at::randn({1, 2, 3, 4});
  ops::AttentionMask m;
  m.key_padding = at::zeros({1, 3}, at::kBool);
  EXPECT_TRUE(at::isfinite(ops::attention(q, k, v, m)).all().item<bool>());
  EXPECT_TRUE(at::isfinite(ops::attention_reference(q, k, v, m)).all().item<bool>());
}

}  // namespace
}  // namespace recast::testing
