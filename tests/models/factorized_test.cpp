// Factorized layers: at full rank the spectral factors reproduce Linear and
// Conv2d (fp32, relative <= 1e-5; k = 1 and 3, stride, padding, dilation,
// bias); at rank r the error is the Eckart-Young bound; the Gram-form
// Frobenius penalty has autograd's gradient of the explicit penalty and the
// closed form; the rank rules; the factorize / merge recipes on GPT-2 and
// ResNet (full rank reproduces the logits; merge returns U V^T; budgets hold).

#include "recast/layers/factorized.h"
#include "recast/models/model.h"
#include "recast/recasts/factorize.h"
#include "recast/recasts/recast.h"
#include "recast/train/optim.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

namespace recast::testing {
namespace {

const std::string kFixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";

double rel(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item<double>();
}

TEST(Factorized, FullRankReproducesLinear) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  for (auto [in, out] : {std::pair<int64_t, int64_t>{13, 7}, {6, 11}, {9, 9}}) {
    for (bool bias : {true, false}) {
      auto dense = torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
      layers::FactorizedLinearOptions o;
      o.in = in, o.out = out, o.rank = std::min(in, out), o.bias = bias;
      for (auto dispatch : {layers::Dispatch::Factorized, layers::Dispatch::Dense}) {
        o.dispatch = dispatch;
        layers::FactorizedLinear f(o);
        f->set_from_dense(dense->weight);
        if (bias) f->bias.copy_(dense->bias);
        const at::Tensor x = torch::randn({3, 5, in});
        EXPECT_LT(rel(f(x), dense(x)), 1e-5) << in << "->" << out;
        EXPECT_LT(rel(f->dense_weight(), dense->weight), 1e-5);
      }
    }
  }
}

TEST(Factorized, FullRankReproducesConv2d) {
  torch::manual_seed(1);
  torch::NoGradGuard no_grad;
  struct Case {
    int64_t in, out, k, stride, padding, dilation;
    bool bias;
  };
  for (const Case& c : {Case{5, 7, 1, 1, 0, 1, false}, Case{5, 7, 1, 2, 0, 1, true},
                        Case{4, 6, 3, 1, 1, 1, false}, Case{4, 6, 3, 2, 1, 1, true},
                        Case{3, 40, 3, 1, 0, 1, false}, Case{6, 5, 3, 1, 2, 2, true}}) {
    auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(c.in, c.out, c.k)
                                      .stride(c.stride)
                                      .padding(c.padding)
                                      .dilation(c.dilation)
                                      .bias(c.bias));
    layers::FactorizedConv2dOptions o;
    o.in = c.in, o.out = c.out, o.rank = std::min(c.out, c.in * c.k * c.k), o.bias = c.bias;
    o.kernel = {c.k, c.k}, o.stride = {c.stride, c.stride}, o.padding = {c.padding, c.padding};
    o.dilation = {c.dilation, c.dilation};
    layers::FactorizedConv2d f(o);
    f->set_from_dense(conv->weight);
    if (c.bias) f->bias.copy_(conv->bias);
    const at::Tensor x = torch::randn({2, c.in, 9, 7});
    EXPECT_LT(rel(f(x), conv(x)), 1e-5) << c.in << "->" << c.out << " k" << c.k << " s" << c.stride;
    EXPECT_LT(rel(f->dense_weight(), conv->weight), 1e-5);
  }
}

// ||W - U V^T||_F^2 = sum_{i > r} s_i^2 for every r, for a matrix and a conv kernel.
TEST(Factorized, RankRErrorIsTheEckartYoungBound) {
  torch::manual_seed(2);
  for (const at::Tensor& w : {torch::randn({12, 20}, at::kDouble), torch::randn({8, 3, 3, 3}, at::kDouble)}) {
    const layers::Spectrum sp = layers::spectrum(w);
    const at::Tensor m = w.reshape({w.size(0), -1});
    for (int64_t r = 1; r <= sp.full_rank(); ++r) {
      const layers::Factors f = layers::spectral_factors(sp, r);
      ASSERT_EQ(f.u.sizes(), (std::vector<int64_t>{m.size(0), r}));
      ASSERT_EQ(f.v.sizes(), (std::vector<int64_t>{m.size(1), r}));
      const double err2 = (m - at::matmul(f.u, f.v.t())).square().sum().item<double>();
      const double tail = r < sp.full_rank()
                              ? sp.s.narrow(0, r, sp.full_rank() - r).square().sum().item<double>()
                              : 0.0;
      EXPECT_NEAR(err2, tail, 1e-9 * m.square().sum().item<double>()) << "rank " << r;
      EXPECT_NEAR(layers::eckart_young_relative(sp.s, r),
                  std::sqrt(err2 / m.square().sum().item<double>()), 1e-9);
      // U and V are balanced: U^T U = V^T V = S_r.
      EXPECT_LT((at::matmul(f.u.t(), f.u) - at::matmul(f.v.t(), f.v)).abs().max().item<double>(), 1e-9);
    }
  }
}

// Whitened (data-aware) factors: at full rank U V^T = W; at rank r the
// output error on the inputs is exactly the Eckart-Young tail of W L's
// spectrum and never above the plain SVD's at the same rank.
TEST(Factorized, WhitenedFactorsKeepTheOutputsBest) {
  torch::manual_seed(5);
  const int64_t m = 12, n = 10, tokens = 200;
  const at::Tensor w = torch::randn({m, n}, at::kDouble);
  // Anisotropic, correlated inputs: channel scales from 0.01 to 10.
  const at::Tensor mix = at::matmul(torch::randn({n, n}, at::kDouble),
                                    at::diag(at::logspace(-2, 1, n, 10, at::kDouble)));
  const at::Tensor x = at::matmul(mix, torch::randn({n, tokens}, at::kDouble));  // [n, tokens]
  const at::Tensor gram = at::matmul(x, x.t()) / tokens;
  const layers::Whitened wh = layers::whitened_spectrum(w, gram, 0.0);
  EXPECT_EQ(wh.damp, 0.0);
  const layers::Factors full = layers::whitened_factors(wh, n);
  EXPECT_LT(rel(at::matmul(full.u, full.v.t()), w), 1e-9);
  const layers::Spectrum plain = layers::spectrum(w);
  for (int64_t r = 1; r < n; ++r) {
    const layers::Factors f = layers::whitened_factors(wh, r);
    // output_error is ||(W - U V^T) X|| / ||W X||, computed from G.
    const double direct = ((at::matmul(w - at::matmul(f.u, f.v.t()), x)).norm() /
                           at::matmul(w, x).norm()).item<double>();
    const double err = layers::output_error(w, f, gram);
    EXPECT_NEAR(err, direct, 1e-9) << "rank " << r;
    EXPECT_NEAR(err, layers::eckart_young_relative(wh.sp.s, r), 1e-9) << "rank " << r;
    const double plain_err = layers::output_error(w, layers::spectral_factors(plain, r), gram);
    EXPECT_LE(err, plain_err + 1e-12) << "rank " << r;
    if (r <= 3) {  // by a margin on these inputs
      EXPECT_LT(err, 0.9 * plain_err) << "rank " << r;
    }
    // Balanced like the spectral init: U^T U = V^T V, diagonal.
    const at::Tensor gu = at::matmul(f.u.t(), f.u), gv = at::matmul(f.v.t(), f.v);
    EXPECT_LT((gu - gv).abs().max().item<double>(), 1e-9 * gu.abs().max().item<double>());
    EXPECT_LT((gu - at::diag(gu.diagonal())).abs().max().item<double>(),
              1e-9 * gu.abs().max().item<double>());
  }
  // Fewer inputs than channels: G is singular, the damping grows until the
  // Cholesky succeeds, and full rank still gives W.
  const at::Tensor few = x.narrow(1, 0, 4);
  const layers::Whitened singular = layers::whitened_spectrum(w, at::matmul(few, few.t()), 0.0);
  EXPECT_GT(singular.damp, 0.0);
  const layers::Factors back = layers::whitened_factors(singular, n);
  EXPECT_LT(rel(at::matmul(back.u, back.v.t()), w), 1e-8);
  // A layer that saw only zeros whitens with I: the plain spectral factors' product.
  const layers::Whitened zero = layers::whitened_spectrum(w, at::zeros({n, n}, at::kDouble), 0.01);
  const layers::Factors z = layers::whitened_factors(zero, 4);
  const layers::Factors p = layers::spectral_factors(plain, 4);
  EXPECT_LT(rel(at::matmul(z.u, z.v.t()), at::matmul(p.u, p.v.t())), 1e-9);
  EXPECT_THROW(layers::whitened_spectrum(w, at::eye(n + 1, at::kDouble), 0.0), Error);
}

// The layers record the rows their weight matrix multiplies: a Linear's
// inputs; a conv's im2col patches in the weight's (i, a, b) order, checked
// through any conv's output energy, sum ||M p||^2 = tr(M G M^T).
TEST(Factorized, LayersRecordTheirInputGram) {
  torch::manual_seed(6);
  torch::NoGradGuard no_grad;
  layers::FactorizedLinearOptions lo;
  lo.in = 6, lo.out = 5, lo.rank = 3;
  layers::FactorizedLinear lin(lo);
  lin->record_inputs = std::make_shared<layers::InputGram>();
  const at::Tensor x = torch::randn({2, 7, 6});
  lin(x);
  lin(x);
  const at::Tensor rows = x.reshape({-1, 6}).to(at::kDouble);
  EXPECT_EQ(lin->record_inputs->rows, 28);
  EXPECT_LT(rel(lin->record_inputs->sum, 2 * at::matmul(rows.t(), rows)), 1e-12);
  layers::FactorizedConv2dOptions co;
  co.in = 3, co.out = 4, co.rank = 2, co.kernel = {3, 3}, co.stride = {2, 2}, co.padding = {1, 1};
  layers::FactorizedConv2d conv(co);
  conv->record_inputs = std::make_shared<layers::InputGram>();
  const at::Tensor img = torch::randn({2, 3, 9, 8}, at::kDouble);
  conv(img.to(at::kFloat));
  const at::Tensor& g = conv->record_inputs->sum;
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{27, 27}));
  EXPECT_EQ(conv->record_inputs->rows, 2 * 5 * 4);
  const at::Tensor mat = torch::randn({5, 27}, at::kDouble);
  const double energy = at::conv2d(img, mat.reshape({5, 3, 3, 3}), {}, 2, 1).square().sum().item<double>();
  EXPECT_NEAR((at::matmul(mat, g) * mat).sum().item<double>(), energy, 1e-5 * energy);
}

TEST(Factorized, FrobeniusPenaltyGradientIsAutogradOfTheExplicitPenalty) {
  torch::manual_seed(3);
  for (const std::vector<int64_t>& lead : {std::vector<int64_t>{}, std::vector<int64_t>{3}}) {
    auto shape = [&](int64_t a, int64_t b) {
      std::vector<int64_t> s = lead;
      s.push_back(a);
      s.push_back(b);
      return s;
    };
    const at::Tensor u0 = torch::randn(shape(9, 4), at::kDouble), v0 = torch::randn(shape(6, 4), at::kDouble);
    at::Tensor u = u0.clone().requires_grad_(), v = v0.clone().requires_grad_();
    const at::Tensor gram = layers::frobenius_penalty(u, v);
    gram.backward();
    at::Tensor ue = u0.clone().requires_grad_(), ve = v0.clone().requires_grad_();
    const at::Tensor explicit_penalty = 0.5 * at::matmul(ue, ve.transpose(-2, -1)).square().sum();
    explicit_penalty.backward();
    EXPECT_NEAR(gram.item<double>(), explicit_penalty.item<double>(), 1e-9 * explicit_penalty.item<double>());
    EXPECT_LT(rel(u.grad(), ue.grad()), 1e-10);
    EXPECT_LT(rel(v.grad(), ve.grad()), 1e-10);
    // The closed form: dU = U (V^T V), dV = V (U^T U).
    EXPECT_LT(rel(u.grad(), at::matmul(u0, at::matmul(v0.transpose(-2, -1), v0))), 1e-10);
    EXPECT_LT(rel(v.grad(), at::matmul(v0, at::matmul(u0.transpose(-2, -1), u0))), 1e-10);
  }
  // bf16 factors are summed in fp32.
  const at::Tensor ub = torch::randn({5, 2}).to(at::kBFloat16), vb = torch::randn({4, 2}).to(at::kBFloat16);
  EXPECT_EQ(layers::frobenius_penalty(ub, vb).scalar_type(), at::kFloat);
}

TEST(Factorized, RankRules) {
  EXPECT_EQ(layers::rank_for_ratio(0.5, 100, 40), 20);
  EXPECT_EQ(layers::rank_for_ratio(1.0, 7, 9), 7);
  EXPECT_EQ(layers::rank_for_ratio(0.001, 7, 9), 1);
  EXPECT_THROW(layers::rank_for_ratio(0.0, 7, 9), Error);
  EXPECT_THROW(layers::rank_for_ratio(1.5, 7, 9), Error);
  // s^2 = 16, 9, 4, 1 (sum 30): 16/30 = .533, 25/30 = .833, 29/30 = .967, 1.
  const at::Tensor s = torch::tensor({4.0, 3.0, 2.0, 1.0}, at::kDouble);
  EXPECT_EQ(layers::rank_for_energy(s, 0.5), 1);
  EXPECT_EQ(layers::rank_for_energy(s, 0.6), 2);
  EXPECT_EQ(layers::rank_for_energy(s, 25.0 / 30.0), 2);
  EXPECT_EQ(layers::rank_for_energy(s, 0.9), 3);
  EXPECT_EQ(layers::rank_for_energy(s, 1.0), 4);
  EXPECT_THROW(layers::rank_for_energy(s, 0.0), Error);
  EXPECT_TRUE(layers::saves_parameters(100, 100, 49));
  EXPECT_FALSE(layers::saves_parameters(100, 100, 50));
  // The layers refuse impossible ranks.
  layers::FactorizedLinearOptions o;
  o.in = 4, o.out = 6, o.rank = 5;
  EXPECT_THROW(layers::FactorizedLinear{o}, Error);
}

// Weight decay skips the factors that Frobenius decay regularises.
TEST(Factorized, FrobeniusDecayFactorsLeaveWeightDecay) {
  std::vector<std::pair<std::string, at::Tensor>> params = {
      {"a.weight_u", torch::zeros({4, 2})}, {"a.weight_v", torch::zeros({2, 3})},
      {"b.weight", torch::zeros({3, 3})}, {"b.bias", torch::zeros({3})}};
  auto groups = train::default_param_groups(params, 0.1, {"a.weight_u", "a.weight_v"});
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].names, (std::vector<std::string>{"b.weight"}));
  EXPECT_EQ(groups[1].names, (std::vector<std::string>{"a.weight_u", "a.weight_v", "b.bias"}));
}

models::ModelPtr tiny_gpt2() { return tiny_model("gpt2", {{"n_positions", 16}}, 5); }

models::ModelPtr tiny_resnet() {
  return tiny_model("resnet18", {{"num_classes", 10}, {"in_chans", 1}, {"channels", {8, 16, 16, 32}}}, 6,
                    /*perturb=*/true);
}

recasts::Conversion run_recipe(const std::string& name, models::Model& m, recasts::RecipeOptions o) {
  return recasts::get(name).convert(m, o);
}

int64_t stored(const models::Model& m) {
  int64_t n = 0;
  for (const auto& kv : models::state_dict_for_save(m)) n += kv.second.numel();
  return n;
}

models::ModelPtr tiny_llama() {
  return tiny_model("llama", {{"intermediate_size", 48}, {"vocab_size", 40}}, 7);
}

models::ModelPtr tiny_vit() {
  return tiny_model("vit_tiny_patch16_224",
                    {{"embed_dim", 192}, {"num_heads", 3}, {"patch_size", 8}, {"num_classes", 5}}, 8);
}

TEST(FactorizeRecipe, FullRankReproducesEveryFamily) {
  std::vector<models::ModelPtr> sources = {tiny_gpt2(), tiny_resnet(), tiny_llama(), tiny_vit(),
                                           tiny_model("qwen2", {{"vocab_size", 40}}, 9),
                                           tiny_model("mistral", {{"vocab_size", 40}}, 10)};
  for (auto& source : sources) {
    recasts::RecipeOptions o;
    o.values = {{"rank_ratio", 1.0}, {"dense_fallback", false}};
    o.probe = source->example_batch(3, 7);
    recasts::Conversion c = run_recipe("factorize", *source, o);
    const size_t offered = recasts::factorizable_layers(*source).size();
    EXPECT_EQ(c.report.size(), offered);
    EXPECT_EQ(recasts::factorizable_layers(*c.model).size(), 0u);  // every one factorized
    EXPECT_EQ(layers::factorized_pairs(*c.model).size(), offered);
    for (const auto& r : c.report) EXPECT_LT(r.relative_error, 1e-5) << r.module;
    EXPECT_LT(c.manifest["logits_change"]["relative"].get<double>(), 1e-5) << source->arch();
    torch::NoGradGuard no_grad;
    EXPECT_LT(rel(c.model->forward(o.probe), source->forward(o.probe)), 1e-4) << source->arch();
    // merge multiplies the factors back: dense U V^T in the source layout.
    recasts::RecipeOptions mo;
    mo.probe = o.probe;
    recasts::Conversion merged = run_recipe("merge", *c.model, mo);
    EXPECT_FALSE(merged.model->config().contains("recast_factorized"));
    EXPECT_EQ(stored(*merged.model), stored(*source));
    for (const auto& r : merged.report) EXPECT_LT(r.relative_error, 1e-6) << r.module;
    std::map<std::string, at::Tensor> after;
    for (const auto& p : merged.model->named_parameters(true)) after[p.key()] = p.value();
    for (const auto& p : source->named_parameters(true)) {
      EXPECT_LT(rel(after.at(p.key()), p.value()), 1e-5) << p.key();
    }
    EXPECT_THROW(run_recipe("merge", *source, mo), UsageError);
    EXPECT_THROW(run_recipe("factorize", *c.model, o), UsageError);
  }
}

// --whiten through the recipe: every layer's output error on the
// calibration inputs is at most the plain SVD's at the same rank (GPT-2's
// Conv1D projections, ResNet's convs, Llama's and ViT's Linears), and at
// full rank the model is reproduced.
TEST(FactorizeRecipe, WhitenedFactorsKeepEachLayersOutputs) {
  std::vector<models::ModelPtr> sources = {tiny_gpt2(), tiny_resnet(), tiny_llama(), tiny_vit()};
  for (auto& source : sources) {
    recasts::RecipeOptions o;
    o.values = {{"rank_ratio", 0.5}, {"whiten", 2}};
    o.probe = source->example_batch(3, 7);
    const std::vector<models::Batch> whitening = {source->example_batch(4, 1), source->example_batch(4, 2)};
    o.training_batches = [&](int64_t n) {
      EXPECT_EQ(n, 2);
      return whitening;
    };
    recasts::Conversion c = run_recipe("factorize", *source, o);
    EXPECT_EQ(c.manifest["options"]["whiten"], 2);
    EXPECT_NE(c.table.find("out error"), std::string::npos);
    int better = 0;
    for (const auto& row : c.manifest["layers"]) {
      if (row["rank"] == "dense") continue;
      const double out = row["output_error"].get<double>(), plain = row["output_error_plain_svd"].get<double>();
      EXPECT_LE(out, plain * (1 + 1e-6) + 1e-12) << source->arch() << " " << row["module"];
      better += out < 0.99 * plain;
    }
    EXPECT_GT(better, 0) << source->arch();
    o.values = {{"rank_ratio", 1.0}, {"dense_fallback", false}};
    recasts::Conversion full = run_recipe("factorize", *source, o);
    for (const auto& r : full.report) EXPECT_LT(r.relative_error, 1e-4) << r.module;
    torch::NoGradGuard no_grad;
    EXPECT_LT(rel(full.model->forward(o.probe), source->forward(o.probe)), 1e-3) << source->arch();
  }
}

TEST(FactorizeRecipe, MergeReturnsTheProductOfTheFactors) {
  auto source = tiny_resnet();
  recasts::RecipeOptions o;
  o.values = {{"rank_ratio", 0.25}};
  recasts::Conversion c = run_recipe("factorize", *source, o);
  // Train-like drift of the factors, then merge.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : c.model->named_parameters(true)) p.value().add_(torch::randn_like(p.value()) * 0.01);
  }
  recasts::Conversion merged = run_recipe("merge", *c.model, {});
  std::map<std::string, at::Tensor> dense;
  for (const auto& p : merged.model->named_parameters(true)) dense[p.key()] = p.value();
  for (const auto& pair : layers::factorized_pairs(*c.model)) {
    const at::Tensor product = at::matmul(pair.u, pair.v.t());
    const at::Tensor w = dense.at(pair.module + ".weight");
    EXPECT_LT(rel(w.reshape({w.size(0), -1}), product), 1e-6) << pair.module;
  }
  torch::NoGradGuard no_grad;
  const at::Tensor x = torch::randn({2, 1, 32, 32});
  c.model->eval();
  merged.model->eval();
  EXPECT_LT(rel(merged.model->forward({{}, {}, x, {}, {}}), c.model->forward({{}, {}, x, {}, {}})), 1e-4);
}

TEST(FactorizeRecipe, RanksFollowTheRuleAndTheBudgetHolds) {
  auto source = tiny_gpt2();
  const int64_t before = stored(*source);
  // --energy: each layer keeps at least that fraction of its energy.
  {
    recasts::RecipeOptions o;
    o.values = {{"energy", 0.8}};
    recasts::Conversion c = run_recipe("factorize", *source, o);
    for (const auto& row : c.manifest["layers"]) {
      if (row["rank"].is_string()) continue;
      EXPECT_GE(row["energy_kept"].get<double>(), 0.8 - 1e-9) << row.dump();
      const double err = row["relative_error"].get<double>();
      EXPECT_NEAR(err, row["eckart_young_bound"].get<double>(), 1e-5) << row.dump();
      EXPECT_NEAR(err * err, 1 - row["energy_kept"].get<double>(), 1e-5) << row.dump();
    }
  }
  // --params: the checkpoint holds at most that fraction, and close to it.
  for (double f : {0.75, 0.5}) {
    recasts::RecipeOptions o;
    o.values = {{"params", f}};
    recasts::Conversion c = run_recipe("factorize", *source, o);
    const int64_t after = stored(*c.model);
    EXPECT_EQ(c.manifest["params_after"].get<int64_t>(), after);
    EXPECT_EQ(c.manifest["params_before"].get<int64_t>(), before);
    EXPECT_LE(static_cast<double>(after), f * static_cast<double>(before));
    EXPECT_GE(static_cast<double>(after), (f - 0.05) * static_cast<double>(before)) << f;
    int64_t sum_before = 0, sum_after = 0;
    for (const auto& row : c.manifest["layers"]) {
      sum_before += row["params_before"].get<int64_t>();
      sum_after += row["params_after"].get<int64_t>();
    }
    EXPECT_EQ(before - sum_before, after - sum_after);  // the rest is untouched
  }
  // --layers selects by checkpoint name; the rest stays as it was.
  {
    recasts::RecipeOptions o;
    o.values = {{"rank_ratio", 0.25}};
    o.layers = "h\\.1\\.mlp\\.";
    recasts::Conversion c = run_recipe("factorize", *source, o);
    EXPECT_EQ(c.manifest["factorized"]["layers"].size(), 2u);
    EXPECT_TRUE(c.manifest["factorized"]["layers"].contains("transformer.h.1.mlp.c_fc"));
  }
  recasts::RecipeOptions bad;
  EXPECT_THROW(run_recipe("factorize", *source, bad), UsageError);  // no rule
  bad.values = {{"rank_ratio", 0.5}, {"energy", 0.5}};
  EXPECT_THROW(run_recipe("factorize", *source, bad), UsageError);  // two rules
  bad.values = {{"params", 0.01}};
  EXPECT_THROW(run_recipe("factorize", *source, bad), UsageError);  // unreachable
  bad.values = {{"rank_ratio", 1.0}};
  EXPECT_THROW(run_recipe("factorize", *source, bad), UsageError);  // nothing saves
  bad.values = {{"rank_ratio", 0.5}};
  bad.layers = "nothing";
  EXPECT_THROW(run_recipe("factorize", *source, bad), UsageError);
}

// What each family offers: its projections and classifier, not embeddings,
// the patch embedding or the lm_head.
TEST(FactorizeRecipe, EachFamilyOffersItsProjections) {
  auto names = [](models::Model& m) {
    std::vector<std::string> out;
    for (const auto& d : recasts::factorizable_layers(m)) out.push_back(d.name);
    return out;
  };
  const auto llama = names(*tiny_llama());
  EXPECT_EQ(llama.size(), 14u);
  EXPECT_EQ(llama.front(), "model.layers.0.self_attn.q_proj");
  const auto vit = names(*tiny_vit());
  EXPECT_EQ(vit.size(), 9u);  // 2 x (qkv, proj, fc1, fc2) + head
  EXPECT_EQ(vit.back(), "head");
  EXPECT_EQ(names(*tiny_gpt2()).size(), 8u);
  EXPECT_EQ(names(*tiny_resnet()).size(), 22u);  // stem + 16 block convs + 4 downsample + fc
}

// --recalibrate-bn: the statistics are re-estimated from the calibration
// batches alone (the cumulative average over them), with no gradient step:
// the stem's BatchNorm, whose input no other statistic touches, ends with the
// mean of its per-batch means and variances.
TEST(FactorizeRecipe, RecalibratesBatchNormOnTheCalibrationBatches) {
  auto source = tiny_resnet();
  recasts::RecipeOptions o;
  o.values = {{"params", 0.5}, {"recalibrate_bn", 3}};
  o.probe.pixel_values = torch::randn({4, 1, 28, 28});
  std::vector<models::Batch> calibration;
  for (int i = 0; i < 3; ++i) calibration.push_back({{}, {}, torch::randn({6, 1, 28, 28}) * 2 + 1, {}});
  o.training_batches = [&](int64_t n) {
    EXPECT_EQ(n, 3);
    return calibration;
  };
  recasts::Conversion c = run_recipe("factorize", *source, o);
  EXPECT_EQ(c.manifest["batchnorm_recalibration"]["batchnorm_layers"], 21);  // stem + 2 x 8 blocks + 4 downsample
  EXPECT_EQ(c.manifest["batchnorm_recalibration"]["batches"], 3);
  EXPECT_NE(c.table.find("BatchNorm statistics re-estimated"), std::string::npos);
  std::map<std::string, at::Tensor> t;
  for (const auto& b : c.model->named_buffers(true)) t[b.key()] = b.value();
  for (const auto& p : c.model->named_parameters(true)) t[p.key()] = p.value();
  EXPECT_FALSE(c.model->is_training());
  torch::NoGradGuard no_grad;
  // The stem conv is factorized too: its output is U (V^T x).
  at::Tensor means = at::zeros({64}), vars = at::zeros({64});
  for (const auto& b : calibration) {
    const at::Tensor z = at::conv2d(at::conv2d(b.pixel_values, t.at("conv1.weight_v"), {}, 2, 3),
                                    t.at("conv1.weight_u"));
    means += z.mean({0, 2, 3}) / 3.0;
    vars += z.var({0, 2, 3}, /*unbiased=*/true) / 3.0;
  }
  EXPECT_LT(rel(t.at("bn1.running_mean"), means), 1e-4);
  EXPECT_LT(rel(t.at("bn1.running_var"), vars), 1e-4);
  // The source's statistics are untouched; a model without BatchNorm is refused.
  for (const auto& b : source->named_buffers(true)) {
    if (b.key() == "bn1.running_mean") {
      EXPECT_GT(rel(b.value(), means), 1e-2);
    }
  }
  auto gpt = tiny_gpt2();
  recasts::RecipeOptions g;
  g.values = {{"params", 0.5}, {"recalibrate_bn", 1}};
  g.training_batches = [&](int64_t) { return std::vector<models::Batch>{gpt->example_batch(2, 0)}; };
  EXPECT_THROW(run_recipe("factorize", *gpt, g), UsageError);
}

// The factorized model round-trips through its checkpoint (config block +
// weight_u / weight_v) and rebuilds from the config alone.
TEST(FactorizeRecipe, FactorizedCheckpointRoundTrips) {
  TempDir dir;
  auto source = tiny_resnet();
  recasts::RecipeOptions o;
  o.values = {{"rank_ratio", 0.5}};
  recasts::Conversion c = run_recipe("factorize", *source, o);
  models::save_model(*c.model, dir.path());
  auto loaded = models::load_model(dir.path());
  torch::NoGradGuard no_grad;
  const models::Batch b = source->example_batch(2, 3);
  EXPECT_EQ(rel(loaded->forward(b), c.model->forward(b)), 0.0);
  // A config naming a module the model lacks, or cannot factorize, is refused.
  nlohmann::json config = c.model->config();
  config["recast_factorized"]["layers"]["layer9.0.conv1"] = 3;
  EXPECT_THROW(models::create_model("resnet18", config), Error);
  config = c.model->config();
  config["recast_factorized"]["layers"]["layer1.0.bn1"] = 3;
  EXPECT_THROW(models::create_model("resnet18", config), Error);
  config["recast_factorized"] = {{"layers", {{"fc", 0}}}};
  EXPECT_THROW(models::create_model("resnet18", config), Error);
}

// Multi-head attention as factorized products: per head the pair's product
// is the block of W_Q W_K^T (and W_V W_O) that head computes, and the sum of
// the heads' products is the whole product.
TEST(FactorizeRecipe, Gpt2AttentionFactorsAreThePerHeadProducts) {
  auto m = tiny_gpt2();
  const auto pairs = recasts::attention_factor_pairs(*m);
  ASSERT_EQ(pairs.size(), 4u);  // 2 layers x (QK, VO)
  std::map<std::string, at::Tensor> p;
  for (const auto& kv : m->named_parameters(true)) p[kv.key()] = kv.value();
  const int64_t w = 32;
  const at::Tensor qkv = p.at("transformer.h.0.attn.c_attn.weight"), proj = p.at("transformer.h.0.attn.c_proj.weight");
  const at::Tensor wq = qkv.narrow(1, 0, w), wk = qkv.narrow(1, w, w), wv = qkv.narrow(1, 2 * w, w);
  EXPECT_LT(rel(at::matmul(pairs[0].u, pairs[0].v.transpose(1, 2)).sum(0), at::matmul(wq, wk.t())), 1e-5);
  EXPECT_LT(rel(at::matmul(pairs[1].u, pairs[1].v.transpose(1, 2)).sum(0), at::matmul(wv, proj)), 1e-5);
  EXPECT_LT(rel(pairs[0].u[1], wq.narrow(1, 8, 8)), 0.0 + 1e-12);
  // Gradients reach the dense weights through the views.
  at::Tensor penalty = at::zeros({});
  for (const auto& pr : pairs) penalty = penalty + layers::frobenius_penalty(pr.u, pr.v);
  penalty.backward();
  EXPECT_GT(p.at("transformer.h.1.attn.c_proj.weight").grad().abs().sum().item<double>(), 0);
}

// Checkpoints saved by transformers and timm, factorized at full rank: the
// reference library's logits.
TEST(FactorizeRecipe, ReferenceCheckpointsAtFullRankGiveTheirLogits) {
  for (const char* name : {"gpt2", "llama_gqa", "vit_tiny_timm", "resnet18_timm", "llama3_rope", "qwen2_window",
                           "mistral_window"}) {
    auto source = models::load_model(kFixtures + "/" + name);
    recasts::RecipeOptions o;
    o.values = {{"rank_ratio", 1.0}, {"dense_fallback", false}};
    recasts::Conversion c = run_recipe("factorize", *source, o);
    const auto inputs = io::TensorStore::open(kFixtures + "/" + name + "/inputs.safetensors");
    const auto outputs = io::TensorStore::open(kFixtures + "/" + name + "/outputs.safetensors");
    models::Batch b;
    if (inputs.find("input_ids")) b.input_ids = inputs.tensor("input_ids");
    if (inputs.find("attention_mask")) b.attention_mask = inputs.tensor("attention_mask");
    if (inputs.find("pixel_values")) b.pixel_values = inputs.tensor("pixel_values");
    torch::NoGradGuard no_grad;
    EXPECT_LT(rel(c.model->forward(b), outputs.tensor("logits")), 1e-4) << name;
  }
}

// Llama with grouped-query attention: each query head's pair uses its group's
// key / value head; the heads' products sum to the whole W_Q W_K^T.
TEST(FactorizeRecipe, LlamaAttentionFactorsFollowTheKeyValueGroups) {
  auto m = tiny_llama();
  const auto pairs = recasts::attention_factor_pairs(*m);
  ASSERT_EQ(pairs.size(), 4u);
  std::map<std::string, at::Tensor> p;
  for (const auto& kv : m->named_parameters(true)) p[kv.key()] = kv.value();
  const at::Tensor wq = p.at("model.layers.0.self_attn.q_proj.weight");  // [4*8, 32]
  const at::Tensor wk = p.at("model.layers.0.self_attn.k_proj.weight");  // [2*8, 32]
  const at::Tensor wv = p.at("model.layers.0.self_attn.v_proj.weight");
  const at::Tensor wo = p.at("model.layers.0.self_attn.o_proj.weight");  // [32, 4*8]
  const at::Tensor k_rep = wk.reshape({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32});
  const at::Tensor v_rep = wv.reshape({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32});
  EXPECT_LT(rel(at::matmul(pairs[0].u, pairs[0].v.transpose(1, 2)).sum(0), at::matmul(wq.t(), k_rep)), 1e-5);
  EXPECT_LT(rel(at::matmul(pairs[1].u, pairs[1].v.transpose(1, 2)).sum(0), at::matmul(v_rep.t(), wo.t())), 1e-5);
  EXPECT_EQ(rel(pairs[0].v[3], wk.narrow(0, 8, 8).t()), 0.0);  // head 3 -> key head 1
}

}  // namespace
}  // namespace recast::testing

namespace recast::testing {
namespace {

// Trained from scratch (--set recast_factorized=...), a factorized layer
// starts from the spectral factors of what the family draws for the dense
// layer in its slot: GPT-2's residual projections (c_proj) at
// 0.02 / sqrt(2 n_layer), the others at 0.02 (full rank: U V^T is the draw).
TEST(FactorizeRecipe, FromScratchFactorsFollowTheFamilysInitOfTheirSlot) {
  auto m = tiny_model("gpt2", {{"recast_factorized",
                                {{"layers", {{"transformer.h.0.mlp.c_proj", 32}, {"transformer.h.0.mlp.c_fc", 32}}}}}},
                      9);
  double proj = 0, fc = 0;
  for (const auto& item : m->named_modules("", false)) {
    if (auto* l = item.value()->as<layers::FactorizedLinear>()) {
      const double s = l->dense_weight().std().item<double>();
      (item.key() == "transformer.h.0.mlp.c_proj" ? proj : fc) = s;
    }
  }
  EXPECT_NEAR(proj, 0.02 / 2.0, 0.001);  // n_layer 2
  EXPECT_NEAR(fc, 0.02, 0.002);
}

}  // namespace
}  // namespace recast::testing
