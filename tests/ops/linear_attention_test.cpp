// Causal linear attention (T2R): the parallel, chunked and recurrent forms
// against the parallel form in fp64, forward and backward, for T not a
// multiple of the chunk, key padding, batch > 1, a state carried across calls,
// and inside a bf16 autocast region (the state stays fp32).

#include "recast/core/version.h"
#include "recast/ops/linear_attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

struct Inputs {
  at::Tensor fq, fk, v, pad;
};

Inputs make(int64_t b, int64_t h, int64_t t, int64_t f, int64_t dv, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  Inputs in;
  in.fq = torch::relu(torch::randn({b, h, t, f}));
  in.fk = torch::relu(torch::randn({b, h, t, f}));
  in.v = torch::randn({b, h, t, dv});
  in.pad = torch::ones({b, t}, torch::kBool);
  if (b > 1) in.pad[1].narrow(0, t - 5, 5).fill_(false);  // right padding in row 1
  return in;
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() /
          b.to(at::kDouble).abs().max().clamp_min(1e-30))
      .item<double>();
}

TEST(LinearAttention, ThreeFormsAgreeWithFp64Reference) {
  const Inputs in = make(2, 3, 37, 5, 4, 1);
  ops::LinearAttentionOptions o;
  o.chunk = 8;  // 37 = 4 chunks + 5
  const at::Tensor ref = ops::linear_attention_parallel(in.fq.to(at::kDouble), in.fk.to(at::kDouble),
                                                        in.v.to(at::kDouble), in.pad, o);
  EXPECT_EQ(ref.scalar_type(), at::kDouble);
  const at::Tensor par = ops::linear_attention_parallel(in.fq, in.fk, in.v, in.pad, o);
  const at::Tensor chk = ops::linear_attention_chunked(in.fq, in.fk, in.v, in.pad, o);
  ops::LinearState state;
  const at::Tensor rec = ops::linear_attention_recurrent(in.fq, in.fk, in.v, state, in.pad, o);
  EXPECT_LT(max_rel(par, ref), 1e-5);
  EXPECT_LT(max_rel(chk, ref), 1e-5);
  EXPECT_LT(max_rel(rec, ref), 1e-5);
  EXPECT_EQ(state.s.scalar_type(), at::kFloat);
  EXPECT_EQ(state.s.sizes(), (std::vector<int64_t>{2, 3, 5, 4}));
}

TEST(LinearAttention, NormaliserFloorIsEps) {
  // Features that barely overlap: phi(q).z << eps, so the floor decides.
  at::Tensor fq = torch::full({1, 1, 3, 2}, 1e-4), fk = torch::full({1, 1, 3, 2}, 1e-4);
  at::Tensor v = torch::ones({1, 1, 3, 1});
  ops::LinearAttentionOptions o;
  o.eps = 0.5;
  at::Tensor y = ops::linear_attention_parallel(fq, fk, v, {}, o);
  // Row t: sum_j<=t (2e-8) * 1 / 0.5
  EXPECT_NEAR(y[0][0][2][0].item<double>(), 3 * 2e-8 / 0.5, 1e-12);
  EXPECT_NEAR(ops::linear_attention_chunked(fq, fk, v, {}, o)[0][0][2][0].item<double>(),
              3 * 2e-8 / 0.5, 1e-12);
}

TEST(LinearAttention, GradientsOfTheThreeFormsAgree) {
  const Inputs in = make(2, 2, 19, 4, 3, 2);
  ops::LinearAttentionOptions o;
  o.chunk = 4;
  const at::Tensor w = torch::randn({2, 2, 19, 3});
  auto grads = [&](int form, at::ScalarType dtype) {
    // Fresh leaves each time (to() returns the same tensor when the dtype matches).
    at::Tensor q = in.fq.to(dtype).clone().requires_grad_(),
               k = in.fk.to(dtype).clone().requires_grad_(),
               v = in.v.to(dtype).clone().requires_grad_();
    at::Tensor y;
    ops::LinearState s;
    if (form == 0) y = ops::linear_attention_parallel(q, k, v, in.pad, o);
    if (form == 1) y = ops::linear_attention_chunked(q, k, v, in.pad, o);
    if (form == 2) y = ops::linear_attention_recurrent(q, k, v, s, in.pad, o);
    (y * w.to(dtype)).sum().backward();
    return std::vector<at::Tensor>{q.grad(), k.grad(), v.grad()};
  };
  const auto ref = grads(0, at::kDouble);
  for (int form = 0; form < 3; ++form) {
    const auto g = grads(form, at::kFloat);
    for (size_t i = 0; i < 3; ++i) EXPECT_LT(max_rel(g[i], ref[i]), 1e-5) << "form " << form << " grad " << i;
  }
}

TEST(LinearAttention, StateCarriesAcrossCalls) {
  const Inputs in = make(1, 2, 30, 6, 5, 3);
  ops::LinearAttentionOptions o;
  o.chunk = 7;
  const at::Tensor whole = ops::linear_attention_chunked(in.fq, in.fk, in.v, {}, o);
  // Prefill 17 tokens with the chunked form, then the rest one at a time.
  ops::LinearState state;
  at::Tensor first = ops::linear_attention_chunked(in.fq.narrow(2, 0, 17), in.fk.narrow(2, 0, 17),
                                                   in.v.narrow(2, 0, 17), {}, o, nullptr, &state);
  // The state owns its memory (no view into the prefill's per-chunk sums).
  EXPECT_EQ(state.s.storage().nbytes(), state.s.nbytes());
  EXPECT_EQ(state.z.storage().nbytes(), state.z.nbytes());
  std::vector<at::Tensor> parts{first};
  for (int64_t t = 17; t < 30; ++t) {
    parts.push_back(ops::linear_attention_recurrent(in.fq.narrow(2, t, 1), in.fk.narrow(2, t, 1),
                                                    in.v.narrow(2, t, 1), state, {}, o));
  }
  EXPECT_LT(max_rel(at::cat(parts, 2), whole), 1e-5);
  // And a chunked continuation from a state.
  ops::LinearState s2;
  ops::linear_attention_chunked(in.fq.narrow(2, 0, 11), in.fk.narrow(2, 0, 11), in.v.narrow(2, 0, 11),
                                {}, o, nullptr, &s2);
  at::Tensor rest = ops::linear_attention_chunked(in.fq.narrow(2, 11, 19), in.fk.narrow(2, 11, 19),
                                                  in.v.narrow(2, 11, 19), {}, o, &s2);
  EXPECT_LT(max_rel(rest, whole.narrow(2, 11, 19)), 1e-5);
}

TEST(LinearAttention, PaddedKeysContributeNothing) {
  Inputs in = make(2, 1, 12, 3, 2, 4);
  ops::LinearAttentionOptions o;
  o.chunk = 5;
  at::Tensor y = ops::linear_attention_chunked(in.fq, in.fk, in.v, in.pad, o);
  // Row 1's real tokens do not change when its padded keys and values do.
  in.fk[1].narrow(1, 7, 5).fill_(100.0);
  in.v[1].narrow(1, 7, 5).fill_(-100.0);
  at::Tensor y2 = ops::linear_attention_chunked(in.fq, in.fk, in.v, in.pad, o);
  EXPECT_TRUE(torch::allclose(y[1].narrow(1, 0, 7), y2[1].narrow(1, 0, 7)));
}

TEST(LinearAttention, BadShapesAreNamed) {
  at::Tensor a = torch::ones({1, 2, 3, 4}), b = torch::ones({1, 2, 3, 5});
  try {
    ops::linear_attention_parallel(a, b, a);
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("linear attention: expected"), std::string::npos) << e.what();
  }
}

// The fused CUDA decoding step against the LibTorch recurrent form (and both
// against the fp64 parallel form): fp32, bf16 and fp16 inputs, odd feature and
// value sizes (not multiples of the kernel's 64 threads), a padded row, many
// steps so the in-place state accumulates.
TEST(LinearAttention, FusedCudaStepMatchesTheLibTorchForm) {
  if (!RECAST_BUILT_WITH_CUDA_KERNELS || !torch::cuda::is_available()) {
    GTEST_SKIP() << "recast built without CUDA kernels, or no GPU";
  }
  torch::NoGradGuard no_grad;
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (auto [f, dv] : {std::pair<int64_t, int64_t>{64, 64}, {37, 130}, {128, 48}}) {
      const int64_t b = 3, h = 5, t = 40;
      Inputs in = make(b, h, t, f, dv, 11);
      at::Tensor fq = in.fq.to(torch::kCUDA, dtype), fk = in.fk.to(torch::kCUDA, dtype),
                 v = in.v.to(torch::kCUDA, dtype);
      at::Tensor pad = torch::ones({b, t}, torch::kBool).to(torch::kCUDA);
      pad[1].narrow(0, 10, 4).fill_(false);  // a gap in row 1
      ops::LinearAttentionOptions fused, reference;
      reference.reference = true;
      ops::LinearState sf, sr;
      std::vector<at::Tensor> yf, yr;
      for (int64_t i = 0; i < t; ++i) {
        auto step = [&](ops::LinearState& st, const ops::LinearAttentionOptions& o) {
          return ops::linear_attention_recurrent(fq.narrow(2, i, 1), fk.narrow(2, i, 1),
                                                 v.narrow(2, i, 1), st, pad.narrow(1, i, 1), o);
        };
        yf.push_back(step(sf, fused));
        yr.push_back(step(sr, reference));
      }
      const at::Tensor a = at::cat(yf, 2), r = at::cat(yr, 2);
      EXPECT_EQ(a.scalar_type(), dtype);
      const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;  // 16-bit outputs round
      EXPECT_LT(max_rel(a, r), tol) << dtype << " f=" << f << " dv=" << dv;
      EXPECT_LT(max_rel(sf.s, sr.s), 1e-5) << dtype << " f=" << f << " dv=" << dv;
      EXPECT_LT(max_rel(sf.z, sr.z), 1e-5) << dtype << " f=" << f << " dv=" << dv;
      const at::Tensor exact = ops::linear_attention_parallel(
          fq.to(at::kDouble), fk.to(at::kDouble), v.to(at::kDouble), pad);
      EXPECT_LT(max_rel(a, exact), tol) << dtype << " f=" << f << " dv=" << dv;
    }
  }
}

}  // namespace
}  // namespace recast::testing
