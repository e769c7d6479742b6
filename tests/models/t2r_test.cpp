// T2R models: a converted decoder (GPT-2, Llama with grouped-query heads, and
// a hybrid) gives the same logits for a whole sequence as token by token
// through the recurrence; greedy decoding reproduces the argmax of a parallel
// forward; a left-padded batch generates what each prompt generates alone
// (softmax and T2R); the recipe keeps every pretrained weight and reports its
// error.

#include "recast/layers/linear_attention.h"
#include "recast/models/generate.h"
#include "recast/models/model.h"
#include "recast/recasts/factorize.h"
#include "recast/recasts/recast.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

models::ModelPtr tiny(const std::string& arch, const std::string& feature_map,
                      std::vector<int64_t> layers) {
  nlohmann::json c;
  if (arch == "gpt2") {
    c = {{"n_layer", 3}, {"vocab_size", 61}};
  } else {
    c = {{"intermediate_size", 48}, {"vocab_size", 61}, {"max_position_embeddings", 2048}};
  }
  c["recast_t2r"] = {{"feature_map", feature_map}, {"feature_dim", 16}, {"eps", 1e-2},
                     {"chunk", 5}, {"layers", layers}};
  return tiny_model(arch, c, 7);
}

// Prefill 9 tokens (chunked form), then one at a time (recurrence).
void expect_recurrence_matches_full_sequence(models::Model& m) {
  models::KVCache cache;
  EXPECT_LT(cached_vs_full(m, 9, cache), 1e-5);
  EXPECT_EQ(cache.length(), 23);
}

TEST(T2R, Gpt2TokenByTokenEqualsFullSequence) {
  for (const char* fm : {"t2r", "elu1", "hedgehog"}) {
    SCOPED_TRACE(fm);
    auto m = tiny("gpt2", fm, {0, 1, 2});
    expect_recurrence_matches_full_sequence(*m);
  }
}

TEST(T2R, HybridAndLlamaTokenByTokenEqualsFullSequence) {
  auto hybrid = tiny("gpt2", "t2r", {1});
  expect_recurrence_matches_full_sequence(*hybrid);
  auto llama = tiny("llama", "t2r", {0, 1});
  expect_recurrence_matches_full_sequence(*llama);
  // Qwen2 (q/k/v biases) and Mistral: one layer linear, the other softmax
  // with its sliding window (5, shorter than the 23 tokens) and rolling cache.
  for (const char* arch : {"qwen2", "mistral"}) {
    SCOPED_TRACE(arch);
    auto m = tiny(arch, "t2r", {0});
    expect_recurrence_matches_full_sequence(*m);
  }
}

TEST(T2R, StateIsConstantSizeWhateverTheLength) {
  auto m = tiny("gpt2", "t2r", {0, 1, 2});
  torch::NoGradGuard no_grad;
  models::KVCache cache;
  models::Batch b;
  b.input_ids = torch::randint(61, {1, 10}, torch::kLong);
  m->forward(b, nullptr, &cache);
  const auto size_after_10 = cache.linear[0].s.sizes().vec();
  for (int i = 0; i < 30; ++i) {
    b.input_ids = torch::randint(61, {1, 1}, torch::kLong);
    m->forward(b, nullptr, &cache);
  }
  EXPECT_EQ(cache.linear[0].s.sizes().vec(), size_after_10);
  EXPECT_TRUE(cache.keys.empty());  // no layer keeps keys
}

TEST(T2R, GreedyDecodingReproducesTheArgmaxOfAParallelForward) {
  auto m = tiny("gpt2", "t2r", {0, 1, 2});
  torch::NoGradGuard no_grad;
  models::KVCache cache;
  models::Batch b;
  b.input_ids = torch::tensor({{3L, 14L, 15L}});
  std::vector<int64_t> seq = {3, 14, 15};
  at::Tensor logits = m->forward(b, nullptr, &cache);
  for (int i = 0; i < 12; ++i) {
    const int64_t next = logits[0][-1].argmax().item<int64_t>();
    seq.push_back(next);
    b.input_ids = torch::tensor({{next}});
    logits = m->forward(b, nullptr, &cache);
  }
  models::Batch whole;
  whole.input_ids = torch::tensor(seq).view({1, -1});
  const at::Tensor full = m->forward(whole);
  for (size_t t = 2; t + 1 < seq.size(); ++t) {
    EXPECT_EQ(full[0][static_cast<int64_t>(t)].argmax().item<int64_t>(), seq[t + 1]) << "position " << t;
  }
}

// Batch generation: prompts of different lengths, left-padded in one batch,
// give each the tokens it gives alone (greedy), on softmax, T2R and hybrid
// GPT-2 and Llama (positions restart on each row's first real token).
TEST(Generate, ALeftPaddedBatchContinuesEachPromptAsAlone) {
  struct Case {
    const char* arch;
    std::vector<int64_t> linear;
  };
  for (const Case& c : {Case{"gpt2", {}}, Case{"gpt2", {0, 1, 2}}, Case{"gpt2", {1}},
                        Case{"llama", {}}, Case{"llama", {0, 1}}, Case{"qwen2", {}}, Case{"mistral", {1}}}) {
    auto m = tiny(c.arch, "t2r", c.linear);
    const std::vector<std::vector<int64_t>> prompts = {{3, 14, 15}, {9, 2, 6, 5, 35, 8, 9}, {7, 9, 3, 2, 3}};
    models::GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = 10;
    at::Generator gen = at::detail::createCPUGenerator(1);
    const auto together = models::generate(*m, prompts, o, gen);
    ASSERT_EQ(together.size(), prompts.size());
    for (size_t r = 0; r < prompts.size(); ++r) {
      const auto alone = models::generate(*m, {prompts[r]}, o, gen);
      EXPECT_EQ(together[r], alone[0]) << c.arch << " with " << c.linear.size() << " linear layers, row " << r;
      EXPECT_EQ(together[r].size(), 10u);
    }
  }
}

TEST(Generate, StopsARowAtEosAndSlidesPastTheContext) {
  auto m = tiny("gpt2", "t2r", {});
  models::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 80;  // past n_positions = 64: the window slides
  o.context = 64;
  at::Generator gen = at::detail::createCPUGenerator(1);
  const auto long_run = models::generate(*m, {{1, 2, 3}}, o, gen);
  EXPECT_EQ(long_run[0].size(), 80u);
  // With the 5th generated token as eos, that row stops before it.
  o.eos = long_run[0][4];
  const auto stopped = models::generate(*m, {{1, 2, 3}, {4, 5}}, o, gen);
  const auto first_eos = std::find(long_run[0].begin(), long_run[0].end(), o.eos) - long_run[0].begin();
  EXPECT_EQ(stopped[0], std::vector<int64_t>(long_run[0].begin(), long_run[0].begin() + first_eos));
  EXPECT_EQ(std::count(stopped[1].begin(), stopped[1].end(), o.eos), 0);
}

TEST(Generate, SamplingHonoursTopKAndTopP) {
  at::Generator gen = at::detail::createCPUGenerator(5);
  const at::Tensor logits = torch::tensor({0.1f, 2.0f, 1.9f, -1.0f, 0.5f});
  models::SamplingOptions greedy{0.0, 0, 1.0}, top1{1.0, 1, 1.0}, top2{1.0, 2, 1.0}, nucleus{1.0, 0, 0.3};
  EXPECT_EQ(models::sample_token(logits, greedy, gen), 1);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(models::sample_token(logits, top1, gen), 1);
    EXPECT_EQ(models::sample_token(logits, nucleus, gen), 1);  // token 1 alone holds > 0.3
    const int64_t two = models::sample_token(logits, top2, gen);
    EXPECT_TRUE(two == 1 || two == 2) << two;
  }
}

TEST(T2R, RecipeKeepsEveryPretrainedWeightAndReportsEachLayer) {
  torch::manual_seed(3);
  auto source = models::create_model(
      "gpt2", {{"n_layer", 3}, {"n_embd", 32}, {"n_head", 4}, {"vocab_size", 61}, {"n_positions", 64}});
  source->init_weights();
  recasts::RecipeOptions o;
  o.layers = "h\\.[12]\\.";
  o.values = {{"feature_map", "t2r"}, {"feature_dim", 8}};
  o.probe.input_ids = torch::randint(61, {2, 16}, torch::kLong);
  recasts::Conversion c = recasts::get("t2r").convert(*source, o);
  ASSERT_EQ(c.report.size(), 2u);
  EXPECT_EQ(c.report[0].module, "transformer.h.1.attn");
  EXPECT_EQ(c.report[1].module, "transformer.h.2.attn");
  for (const auto& r : c.report) {
    EXPECT_GT(r.relative_error, 0.0);
    EXPECT_TRUE(std::isfinite(r.relative_error));
  }
  // Every source tensor is in the converted model, unchanged.
  auto converted = c.model->named_parameters(true);
  for (const auto& p : source->named_parameters(true)) {
    ASSERT_TRUE(converted.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(converted[p.key()], p.value())) << p.key();
  }
  EXPECT_TRUE(converted.contains("transformer.h.1.attn.feature_map.weight"));
  EXPECT_FALSE(converted.contains("transformer.h.0.attn.feature_map.weight"));
  // Layer 0 kept softmax: its output equals the source's before layer 1.
  EXPECT_NE(error_of([&] { recasts::select_modules({"transformer.h.0.attn"}, "layer4"); })
                .find("matches none"),
            std::string::npos);
  EXPECT_NE(error_of([&] { recasts::get("t2r").convert(*c.model, o); })
                .find("already converted"),
            std::string::npos);
}

TEST(T2R, TransferModeMeasuresEachLayerAgainstSoftmax) {
  auto m = tiny("gpt2", "hedgehog", {0, 2});
  models::Batch b;
  b.input_ids = torch::randint(61, {2, 12}, torch::kLong);
  // The T2R cores, found through the model's slots.
  std::vector<std::pair<std::string, layers::T2RAttentionImpl*>> cores;
  for (const auto& s : m->slots().built()) {
    if (auto* core = dynamic_cast<layers::T2RAttentionImpl*>(s.module.get())) {
      cores.emplace_back(s.slot.name, core);
    }
  }
  ASSERT_EQ(cores.size(), 2u);
  EXPECT_EQ(cores[0].first, "transformer.h.0.attn");
  EXPECT_EQ(cores[1].first, "transformer.h.2.attn");
  for (auto& c : cores) c.second->probe.on = true;
  const at::Tensor y = m->forward(b);
  for (auto& c : cores) c.second->probe.on = false;
  // In transfer mode each layer passes the softmax output on: the logits are
  // the softmax model's with the same weights.
  nlohmann::json dense = m->config();
  dense.erase("recast_t2r");
  auto soft = models::create_model("gpt2", dense);
  {
    torch::NoGradGuard no_grad;
    auto mine = m->named_parameters(true);
    for (auto& p : soft->named_parameters(true)) p.value().copy_(mine[p.key()]);
  }
  EXPECT_LT(max_rel(y.detach(), soft->forward(b)), 1e-5);
  // The MSE is differentiable w.r.t. the feature maps, and measures each layer.
  ASSERT_TRUE(cores[0].second->probe.mse.defined() && cores[1].second->probe.mse.defined());
  EXPECT_GT(cores[0].second->probe.relative, 0.0);
  (cores[0].second->probe.mse + cores[1].second->probe.mse).backward();
  auto params = m->named_parameters(true);
  EXPECT_TRUE(params["transformer.h.0.attn.feature_map.weight"].grad().defined());
  EXPECT_TRUE(params["transformer.h.2.attn.feature_map.weight"].grad().defined());
}

}  // namespace
}  // namespace recast::testing
