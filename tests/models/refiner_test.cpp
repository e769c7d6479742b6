// Refiner's map refinement: the fast path (chunked, batched convolutions)
// equals the explicit one forward and backward, in training and eval mode,
// with and without BN, for odd N, K = 1, 3, 5, r = 1, 3 and batch > 1; at
// insertion (gate 0) the maps are returned exactly and the gate still gets a
// gradient; the refined attention core is softmax attention at insertion; a
// timm ViT converted with `--recipe refiner` gives the logits it gave, loads
// back from its directory, and its refiners train.

#include "recast/layers/refiner.h"
#include "recast/core/error.h"
#include "recast/eval/attention_view.h"
#include "recast/io/safetensors.h"
#include "recast/models/model.h"
#include "recast/ops/attention.h"
#include "recast/recasts/recast.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <cmath>
#include <regex>
#include <string>
#include <vector>

namespace recast::testing {
namespace {

using layers::MapRefiner;
using layers::RefinerOptions;

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() /
          b.to(at::kDouble).abs().max().clamp_min(1e-30))
      .item<double>();
}

// Softmax maps [B, H, N, N].
at::Tensor random_maps(int64_t b, int64_t h, int64_t n) {
  return torch::randn({b, h, n, n}).mul(2).softmax(-1);
}

// A refiner whose every tensor is off its initial value: an open gate, norms
// with non-trivial scale, shift and running statistics.
MapRefiner perturbed(const RefinerOptions& o) {
  MapRefiner m(o);
  torch::NoGradGuard no_grad;
  m->gate.copy_(torch::randn_like(m->gate));
  for (auto& n : {m->expand_norm, m->local_norm, m->reduce_norm}) {
    if (!n) continue;
    n->weight.copy_(torch::rand_like(n->weight) + 0.5);
    // Shifted up, so that ReLU6 passes most values (every path carries a gradient).
    n->bias.copy_(torch::rand_like(n->bias) * 0.5 + 0.25);
    n->running_mean.copy_(torch::randn_like(n->running_mean) * 0.1);
    n->running_var.copy_(torch::rand_like(n->running_var) + 0.5);
  }
  return m;
}

std::vector<at::Tensor> grads_of(MapRefiner& m, const at::Tensor& maps, bool reference) {
  m->zero_grad();
  at::Tensor a = maps.detach().clone().requires_grad_(true);
  const at::Tensor out = reference ? m->forward_reference(a) : m->forward(a);
  // A loss that weighs every output differently.
  (out * torch::linspace(-1, 1, out.numel(), out.options()).view(out.sizes())).sum().backward();
  std::vector<at::Tensor> g = {out.detach(), a.grad()};
  for (const auto& p : m->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  return g;
}

TEST(Refiner, FastAndReferencePathsAgreeForwardAndBackward) {
  torch::manual_seed(3);
  for (bool bn : {true, false}) {
    for (int64_t r : {1, 3}) {
      for (int64_t k : {1, 3, 5}) {
        for (bool training : {true, false}) {
          RefinerOptions o;
          o.heads = 3;
          o.expansion = r;
          o.kernel = k;
          o.batch_norm = bn;
          // In double: what a training-mode BN washes out is rounding noise,
          // which in float reaches 1e-5 of the largest gradient.
          MapRefiner m = perturbed(o);
          m->to(torch::kDouble);
          m->train(training);
          const at::Tensor maps = random_maps(2, 3, 7).to(torch::kDouble);  // N = 7: odd (CLS + 6 patches)
          SCOPED_TRACE("bn " + std::to_string(bn) + " r " + std::to_string(r) + " K " +
                       std::to_string(k) + (training ? " training" : " eval"));
          // The reference first: it leaves the running statistics alone.
          const auto ref = grads_of(m, maps, true);
          const auto fast = grads_of(m, maps, false);
          ASSERT_EQ(ref.size(), fast.size());
          EXPECT_LT(max_rel(fast[0], ref[0]), 1e-12) << "forward";
          EXPECT_LT(max_rel(fast[1], ref[1]), 1e-12) << "d maps";
          // The largest gradient of any tensor: the scale rounding noise is measured on.
          double largest = 0;
          for (size_t j = 1; j < ref.size(); ++j) largest = std::max(largest, ref[j].abs().max().item<double>());
          size_t i = 2;
          for (const auto& p : m->named_parameters()) {
            // What a training-mode BN right after it makes irrelevant has a
            // gradient of 0 up to rounding in both paths: a conv's bias (the
            // batch mean is subtracted) and, for K = 1, the depthwise weight
            // (BN undoes a per-channel scale).
            const bool washed_out =
                bn && training &&
                (p.key() == "expand.bias" || p.key() == "local.bias" || p.key() == "reduce.bias" ||
                 (k == 1 && p.key() == "local.weight"));
            const double diff = (fast[i].to(at::kDouble) - ref[i].to(at::kDouble)).abs().max().item<double>();
            const double scale = ref[i].abs().max().item<double>();
            if (washed_out) {
              EXPECT_LT(diff, 1e-10 * largest) << p.key() << " (largest gradient " << largest << ")";
            } else {
              EXPECT_LT(diff, 1e-9 * scale) << p.key();
              EXPECT_GT(scale, 0) << p.key() << " gets no gradient";
            }
            ++i;
          }
        }
      }
    }
  }
}

TEST(Refiner, TrainingUpdatesTheRunningStatisticsOfEveryChunk) {
  RefinerOptions o;
  o.heads = 2;
  o.expansion = 3;
  MapRefiner m(o);
  m->train();
  torch::NoGradGuard no_grad;
  const at::Tensor maps = random_maps(4, 2, 5);
  m->forward(maps);
  // Every expanded channel's statistics moved from (0, 1), and the count is
  // one forward, not one per chunk.
  EXPECT_TRUE((m->expand_norm->running_mean != 0).all().item<bool>());
  EXPECT_TRUE((m->local_norm->running_var != 1).all().item<bool>());
  EXPECT_EQ(m->expand_norm->num_batches_tracked.item<int64_t>(), 1);
  // They equal BatchNorm2d's own update on the whole expansion.
  torch::nn::BatchNorm2d whole(torch::nn::BatchNormOptions(6));
  whole->train();
  whole->forward(at::conv2d(maps, m->expand->weight, m->expand->bias));
  EXPECT_TRUE(torch::allclose(m->expand_norm->running_mean, whole->running_mean, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(m->expand_norm->running_var, whole->running_var, 1e-6, 1e-7));
}

TEST(Refiner, ExactAtInsertionYetTrainable) {
  torch::manual_seed(5);
  for (bool bn : {true, false}) {
    RefinerOptions o;
    o.heads = 4;
    o.batch_norm = bn;
    MapRefiner m(o);
    const at::Tensor maps = random_maps(2, 4, 9);
    for (bool training : {true, false}) {
      m->train(training);
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(torch::equal(m->forward(maps), maps)) << "bn " << bn;
      EXPECT_TRUE(torch::equal(m->forward_reference(maps), maps)) << "bn " << bn;
    }
    // The gate enters linearly: its gradient is <dL/dA', R>, not zero, while
    // the branch's own weights wait for the gate to open.
    m->train();
    torch::optim::SGD sgd(m->parameters(), torch::optim::SGDOptions(0.1));
    auto step = [&] {
      sgd.zero_grad();
      (m->forward(maps) * torch::randn_like(maps)).sum().backward();
    };
    step();
    EXPECT_GT(m->gate.grad().abs().min().item<double>(), 0) << "bn " << bn;
    EXPECT_EQ(m->expand->weight.grad().abs().max().item<double>(), 0);
    sgd.step();
    step();
    EXPECT_GT(m->expand->weight.grad().abs().max().item<double>(), 0) << "bn " << bn;
    EXPECT_GT(m->local->weight.grad().abs().max().item<double>(), 0) << "bn " << bn;
  }
}

// A ViT attention's spec: 3 heads of 8.
layers::AttentionSpec three_heads() {
  layers::AttentionSpec spec;
  spec.heads = spec.kv_heads = 3;
  spec.head_dim = 8;
  spec.scale = 1.0 / std::sqrt(8.0);
  return spec;
}

TEST(Refiner, TheRefinedCoreIsSoftmaxAttentionAtInsertion) {
  torch::manual_seed(7);
  const layers::AttentionSpec spec = three_heads();
  RefinerOptions o;
  o.heads = 3;
  layers::RefinedAttention core(spec, o);
  const at::Tensor q = torch::randn({2, 3, 11, 8}), k = torch::randn({2, 3, 11, 8}),
                   v = torch::randn({2, 3, 11, 8});
  ops::AttentionMask mask;
  const at::Tensor plain = ops::attention_reference(q, k, v, mask, spec.scale);
  core->eval();
  EXPECT_LT(max_rel(core->forward(q, k, v, mask, nullptr), plain), 1e-6);
  EXPECT_NE(core->describe().find("expansion 3, kernel 3, BN + ReLU6"), std::string::npos);
  // The maps it refines are the softmax's: rows that sum to one.
  EXPECT_TRUE(torch::allclose(core->maps(q, k).sum(-1), torch::ones({2, 3, 11}), 1e-5, 1e-6));
  mask.causal = true;
  EXPECT_THROW(core->forward(q, k, v, mask, nullptr), Error);
}

// Shared maps: the taking core ignores its q and k and applies the giving
// core's raw softmax maps (refined by its own refiner) to its values; the
// taker's loss reaches the giver's queries and keys through them.
TEST(Refiner, SharedMapsAreTheRawMapsOfTheBlockBefore) {
  torch::manual_seed(11);
  const layers::AttentionSpec spec = three_heads();
  RefinerOptions o;
  o.heads = 3;
  auto handoff = std::make_shared<layers::MapHandoff>();
  layers::RefinedAttention giver(spec, std::nullopt, handoff, nullptr);
  layers::RefinedAttention taker(spec, o, nullptr, handoff);
  EXPECT_FALSE(giver->refiner);
  EXPECT_NE(giver->describe().find("shared with the next block"), std::string::npos);
  EXPECT_NE(taker->describe().find("the previous block's softmax maps with refined maps"), std::string::npos);
  giver->eval();
  taker->eval();
  const at::Tensor q = torch::randn({2, 3, 9, 8}).requires_grad_(true), k = torch::randn({2, 3, 9, 8}),
                   v = torch::randn({2, 3, 9, 8}), v2 = torch::randn({2, 3, 9, 8});
  ops::AttentionMask mask;
  const at::Tensor unused = torch::full({2, 3, 9, 8}, std::nan(""));
  // The giver is softmax attention; at gate 0 the taker applies the same maps.
  const at::Tensor first = giver->forward(q, k, v, mask, nullptr);
  EXPECT_LT(max_rel(first, ops::attention_reference(q, k, v, mask, spec.scale)), 1e-6);
  const at::Tensor second = taker->forward(unused, unused, v2, mask, nullptr);
  EXPECT_LT(max_rel(second, ops::attention_reference(q, k, v2, mask, spec.scale)), 1e-6);
  EXPECT_FALSE(handoff->maps.defined());  // taken, not kept
  EXPECT_THROW(taker->forward(unused, unused, v2, mask, nullptr), Error);  // nothing handed over
  // With the gate open: the refined maps of the giver's raw ones, and the
  // gradient of the taker's output reaches the giver's queries.
  {
    torch::NoGradGuard no_grad;
    taker->refiner->gate.fill_(0.5);
  }
  giver->forward(q, k, v, mask, nullptr);
  const at::Tensor maps = giver->maps(q, k).detach();
  const at::Tensor opened = taker->forward(unused, unused, v2, mask, nullptr);
  EXPECT_LT(max_rel(opened, at::matmul(taker->refiner->forward_reference(maps), v2)), 1e-5);
  opened.sum().backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_GT(q.grad().abs().max().item<double>(), 0);
  // The value-only projection: zeros where the queries and keys were.
  layers::ValueProjection p(8, 6, 12, true);
  const at::Tensor x = torch::randn({2, 5, 8});
  const at::Tensor y = p->forward(x);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 5, 18}));
  EXPECT_EQ(y.narrow(-1, 0, 12).abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::allclose(y.narrow(-1, 12, 6), at::linear(x, p->weight, p->bias)));
}

TEST(Refiner, RefusesWhatItCannotRefine) {
  RefinerOptions o;
  o.heads = 2;
  o.kernel = 4;
  EXPECT_THROW(MapRefiner{o}, Error);
  o.kernel = 3;
  MapRefiner m(o);
  EXPECT_THROW(m->forward(torch::rand({1, 3, 5, 5})), Error);  // heads
  EXPECT_THROW(m->forward(torch::rand({1, 2, 5, 4})), Error);  // not square
  layers::AttentionSpec spec;
  spec.heads = spec.kv_heads = 3;
  EXPECT_THROW(layers::RefinedAttention(spec, o), Error);  // 2 heads vs 3
  spec.heads = spec.kv_heads = 2;
  spec.causal = true;
  EXPECT_THROW(layers::RefinedAttention(spec, o), Error);
}

TEST(RefinerRecipe, ATimmVitConvertsExactlyReloadsAndTrains) {
  const std::string dir = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/vit_small_timm";
  models::ModelPtr source = models::load_model(dir);
  io::TensorStore inputs = io::TensorStore::open(dir + "/inputs.safetensors");
  models::Batch batch;
  batch.pixel_values = inputs.tensor("pixel_values", true);
  recasts::RecipeOptions o;
  o.probe = batch;
  recasts::Conversion c = recasts::get("refiner").convert(*source, o);
  // Every block (2), 4 heads: 1x1 4->12 (+bias), depthwise 3x3 on 12, 1x1
  // 12->4, three BNs, a gate.
  ASSERT_EQ(c.report.size(), 2u);
  const int64_t per_block = (12 * 4 + 12) + (12 * 9 + 12) + (4 * 12 + 4) + 2 * (12 + 12) + 2 * 4 + 4;
  EXPECT_EQ(c.manifest["parameters_added"].get<int64_t>(), 2 * per_block);
  for (const auto& r : c.report) {
    EXPECT_EQ(r.max_abs_error, 0.0) << r.module;  // the gate is exactly 0
    EXPECT_NE(r.replaced.find("expansion 3, kernel 3, BN + ReLU6"), std::string::npos);
  }
  EXPECT_EQ(c.manifest["options"]["layers"], nlohmann::json::array({0, 1}));
  torch::NoGradGuard no_grad;
  source->eval();
  c.model->eval();
  const at::Tensor reference = io::TensorStore::open(dir + "/outputs.safetensors").tensor("logits");
  const at::Tensor logits = c.model->forward(batch);
  EXPECT_LE(max_rel(logits, reference), 1e-5);
  EXPECT_TRUE(torch::equal(logits, source->forward(batch)));
  EXPECT_EQ(c.model->config()["recast_refiner"]["norm"], "bn");

  // An ordinary checkpoint directory: saved, loaded back, the same logits.
  TempDir out;
  models::save_model(*c.model, out.path());
  models::ModelPtr loaded = models::load_model(out.path());
  loaded->eval();
  EXPECT_TRUE(torch::equal(loaded->forward(batch), logits));

  // A few fine-tuning steps: the refiners receive gradients and move.
  {
    torch::AutoGradMode grad(true);
    loaded->train();
    std::vector<at::Tensor> refiner_params;
    std::vector<at::Tensor> initial;
    for (const auto& p : loaded->named_parameters()) {
      if (p.key().find(".refiner.") != std::string::npos) {
        refiner_params.push_back(p.value());
        initial.push_back(p.value().detach().clone());
      }
    }
    ASSERT_FALSE(refiner_params.empty());
    torch::optim::AdamW opt(loaded->parameters(), torch::optim::AdamWOptions(1e-2));
    const at::Tensor labels = torch::tensor({0, 1, 2, 3, 4}).slice(0, 0, logits.size(0)).remainder(5);
    for (int step = 0; step < 3; ++step) {
      opt.zero_grad();
      at::cross_entropy_loss(loaded->forward(batch), labels).backward();
      opt.step();
    }
    for (size_t i = 0; i < refiner_params.size(); ++i) {
      EXPECT_FALSE(torch::equal(refiner_params[i].detach(), initial[i])) << "refiner parameter " << i;
    }
  }

  // Misuse: converting twice, a model without ViT attention, an even kernel.
  EXPECT_THROW(recasts::get("refiner").convert(*c.model, o), UsageError);
  models::ModelPtr gpt = models::create_model(
      "gpt2", {{"n_layer", 1}, {"n_embd", 8}, {"n_head", 2}, {"vocab_size", 11}});
  EXPECT_THROW(recasts::get("refiner").convert(*gpt, recasts::RecipeOptions{}), UsageError);
  recasts::RecipeOptions even = o;
  even.values["kernel"] = 4;
  EXPECT_THROW(recasts::get("refiner").convert(*source, even), UsageError);
}

TEST(RefinerRecipe, TheConfigBlockIsValidatedKeyByKey) {
  using layers::RefinerConfig;
  const auto error = [](const char* text) {
    return error_of([&] { RefinerConfig::parse(nlohmann::json::parse(text)); });
  };
  EXPECT_NE(error(R"({"layers": [0], "kernal": 3})").find("unknown key 'kernal'"), std::string::npos);
  EXPECT_NE(error(R"({"layers": [0], "kernel": 4})").find("'kernel' must be odd"), std::string::npos);
  EXPECT_NE(error(R"({"layers": [0], "expansion": 0})").find("'expansion' must be in [1, 64]"),
            std::string::npos);
  EXPECT_NE(error(R"({"layers": [-1]})").find("block indices >= 0"), std::string::npos);
  EXPECT_NE(error(R"({"layers": []})").find("'layers' is missing or empty"), std::string::npos);
  EXPECT_NE(error(R"({"layers": [0], "norm": "ln"})").find("'norm' must be"), std::string::npos);
  const RefinerConfig c = RefinerConfig::parse(nlohmann::json::parse(R"({"layers": [1, 0], "norm": "none"})"));
  EXPECT_EQ(c.to_json(), nlohmann::json::parse(R"({"layers": [0, 1], "expansion": 3, "kernel": 3, "norm": "none"})"));
  // A block index the model does not have is named when the model is built.
  EXPECT_NE(error_of([] {
              tiny_model("vit_tiny_patch16_224", {{"recast_refiner", {{"layers", {5}}}}});
            }).find("block 5 out of range"),
            std::string::npos);
  // From scratch (Refined-ViT without shared maps): built, initialised with
  // the gate closed, and the refiner's tensors are in the checkpoint.
  models::ModelPtr m = tiny_model("vit_tiny_patch16_224",
                                  {{"recast_refiner", {{"layers", {0}}, {"expansion", 2}}}}, 3);
  bool gate = false;
  for (const auto& p : m->named_parameters()) {
    if (p.key() == "blocks.0.attn.refiner.gate") {
      gate = true;
      EXPECT_EQ(p.value().abs().max().item<double>(), 0.0);
    }
  }
  EXPECT_TRUE(gate);
  const models::Batch b = m->example_batch(2, 1);
  EXPECT_EQ(m->forward(b).size(0), 2);
  EXPECT_NE(error(R"({"layers": [0, 2], "shared": true})").find("'shared' needs an odd block"),
            std::string::npos);
  EXPECT_NE(error(R"({"layers": [1], "shared": 1})").find("'shared' must be true or false"), std::string::npos);
}

// The released Refiner-ViT's shared maps, from scratch: block 1 has no
// queries and keys (its qkv holds only the values: [D, D]) and refines block
// 0's maps; block 0, not in "layers", computes plain softmax maps and hands
// them over. An ordinary directory: saved and loaded, the same logits.
TEST(RefinerRecipe, SharedMapsFromScratch) {
  models::ModelPtr m = tiny_model(
      "vit_tiny_patch16_224", {{"recast_refiner", {{"layers", {1}}, {"shared", true}}}}, 5);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& p : m->named_parameters()) shapes[p.key()] = p.value().sizes().vec();
  EXPECT_EQ(shapes.at("blocks.0.attn.qkv.weight"), (std::vector<int64_t>{96, 32}));
  EXPECT_EQ(shapes.at("blocks.1.attn.qkv.weight"), (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(shapes.at("blocks.1.attn.qkv.bias"), (std::vector<int64_t>{32}));
  EXPECT_EQ(shapes.count("blocks.0.attn.refiner.gate"), 0u);
  EXPECT_EQ(shapes.count("blocks.1.attn.refiner.gate"), 1u);
  EXPECT_EQ(m->config()["recast_refiner"]["shared"], true);
  // Block 1's values start from the family's init of the values of a qkv
  // projection (not torch.nn's default for a D x D Linear): timm's ViT
  // init draws them from a truncated normal with std 0.02.
  for (const auto& p : m->named_parameters()) {
    if (p.key() == "blocks.1.attn.qkv.weight") {
      EXPECT_LT(p.value().std().item<double>(), 0.05);
    }
  }
  m->eval();
  const models::Batch b = m->example_batch(2, 1);
  torch::NoGradGuard no_grad;
  const at::Tensor logits = m->forward(b);
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  TempDir out;
  models::save_model(*m, out.path());
  models::ModelPtr loaded = models::load_model(out.path());
  loaded->eval();
  EXPECT_TRUE(torch::equal(loaded->forward(b), logits));
  // What analysis sees of block 1: its raw maps are block 0's.
  const auto found = eval::attention_at(*loaded, b.pixel_values.narrow(0, 0, 1), 16, 16, std::regex("."));
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].name, "blocks.1.attn");
}

// analyze on a refined ViT: per refined block two entries, its raw softmax
// maps and its refined ones, at the query patch over the patch grid; at
// insertion they are equal, the raw weights with the CLS key's sum to 1,
// and the picture has one title and one heat map per head for each.
TEST(RefinerRecipe, AnalyzeShowsTheRawAndTheRefinedMaps) {
  models::ModelPtr m = tiny_model("vit_tiny_patch16_224", {{"img_size", 64},
                                                            {"patch_size", 8},
                                                            {"recast_refiner", {{"layers", {0, 1}}}}},
                                  9);
  torch::manual_seed(2);
  const at::Tensor image01 = torch::rand({3, 64, 64});
  const at::Tensor pixels = (image01.unsqueeze(0) - 0.5) / 0.5;
  const auto found = eval::attention_at(*m, pixels, 40, 9, std::regex("blocks\\.1"));
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].variant, "raw");
  EXPECT_EQ(found[1].variant, "refined");
  for (const auto& l : found) {
    EXPECT_EQ(l.name, "blocks.1.attn");
    EXPECT_EQ(l.in_h, 8);  // 64 / 8 patches a side
    EXPECT_EQ(l.query_row, 5);  // 40 of 64
    EXPECT_EQ(l.query_col, 1);  // 9 of 64
    ASSERT_EQ(l.maps.sizes(), (std::vector<int64_t>{4, 8, 8}));
    ASSERT_EQ(l.gate.size(), 4u);
    for (int64_t h = 0; h < 4; ++h) {
      EXPECT_EQ(l.gate[h], 0.0);
      EXPECT_NEAR(l.maps[h].sum().item<double>() + l.cls_weight[h], 1.0, 1e-5);
      const int64_t k = l.maps[h].flatten().argmax().item<int64_t>();
      EXPECT_EQ(l.peak[h], std::make_pair(k / 8 - 5, k % 8 - 1));
      EXPECT_GE(l.distance[h], 0.0);
    }
    EXPECT_EQ(l.to_json()["maps"], l.variant);
  }
  EXPECT_TRUE(torch::equal(found[0].maps, found[1].maps));  // gate 0: refined == raw
  const draw::Figure fig = eval::attention_figure(found, image01, 40, 9);
  for (const char* group : {"blocks.1.attn raw", "blocks.1.attn refined"}) {
    EXPECT_EQ(fig.find(group, "title").size(), 1u) << group;
    EXPECT_EQ(fig.find(group, "map").size(), 4u) << group;
    EXPECT_EQ(fig.find(group, "head").size(), 4u) << group;
  }
  EXPECT_NE(fig.find("blocks.1.attn refined", "title").at(0)->text.find("refined maps"), std::string::npos);
  EXPECT_THROW(eval::attention_at(*m, pixels, 1, 1, std::regex("blocks\\.7")), Error);
  // A plain ViT has nothing to show.
  models::ModelPtr plain = tiny_model("vit_tiny_patch16_224", {{"img_size", 64}, {"patch_size", 8}});
  EXPECT_THROW(eval::attention_at(*plain, pixels, 1, 1, std::regex(".")), Error);
}

}  // namespace
}  // namespace recast::testing
