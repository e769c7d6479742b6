// Static decoding state: a reserved KV cache (grown, compacted for sliding
// windows) decodes as the parallel form; steps of fixed shapes (what a CUDA
// graph captures: keys written at a device-side slot, the whole buffer
// masked, states updated in place, sampled on the device) give the eager
// path's tokens and logits for softmax, T2R, hybrid, convolution, GQA and
// sliding-window decoders, left-padded batches, eos and a sliding context;
// the step allocates no new state; the device sampler keeps what top-k /
// top-p keep and samples the softmax.

#include "recast/models/decode_steps.h"
#include "recast/models/generate.h"
#include "recast/models/model.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

// A tiny decoder: softmax, or T2R / conv layers in `layers`.
models::ModelPtr decoder(const std::string& arch, const std::string& recast,
                         const std::vector<int64_t>& layers, uint64_t seed = 7) {
  nlohmann::json c = {{"vocab_size", 61}};
  if (arch == "gpt2") c["n_layer"] = 3;
  if (arch == "mistral" || arch == "qwen2") c["sliding_window"] = 5;
  if (arch == "qwen2") c["use_sliding_window"] = true, c["max_window_layers"] = 1;
  if (recast == "t2r" && !layers.empty()) {
    c["recast_t2r"] = {{"feature_map", "t2r"}, {"feature_dim", 16}, {"eps", 1e-2},
                       {"chunk", 5}, {"layers", layers}};
  }
  if (recast == "conv") {
    std::vector<std::string> modules;
    for (int64_t l : layers) {
      modules.push_back(arch == "gpt2" ? msg("transformer.h.", l, ".attn") : msg("model.layers.", l, ".self_attn"));
    }
    c["recast_conv"] = {{"kind", "dilated"}, {"modules", modules}, {"kernel_size", 3}, {"heads", 0},
                        {"dilation", 2}, {"normalize", "softmax"}, {"weight_dropout", 0.0}};
  }
  return tiny_model(arch, c, seed);
}

struct Case {
  const char* arch;
  const char* recast;
  std::vector<int64_t> layers;
};
const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"gpt2", "", {}},          {"gpt2", "t2r", {0, 1, 2}}, {"gpt2", "t2r", {1}},
      {"gpt2", "conv", {0, 2}},  {"llama", "", {}},          {"llama", "t2r", {0}},
      {"qwen2", "", {}},         {"mistral", "", {}},        {"mistral", "t2r", {1}}};
  return all;
}
std::string name(const Case& c) {
  return msg(c.arch, c.recast[0] ? " + " : "", c.recast, " ", c.layers.size(), " layers");
}

TEST(StaticCache, GrowsAndCompactsAndDecodesAsTheParallelForm) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    auto m = decoder(c.arch, c.recast, c.layers);
    for (int64_t reserve : {4, 64}) {  // 4: reallocated (and windows compacted) while decoding
      models::KVCache cache;
      cache.reserve(reserve);
      EXPECT_LT(cached_vs_full(*m, 3, cache), 1e-5) << "reserve " << reserve;
      EXPECT_EQ(cache.length(), 23);
    }
  }
  // A sliding window keeps window - 1 keys in its buffer.
  auto m = decoder("mistral", "", {});
  models::KVCache cache;
  cache.reserve(6);
  cached_vs_full(*m, 3, cache);
  EXPECT_EQ(cache.held(0), 4);
  EXPECT_EQ(cache.keys[0].size(2), 6);  // never grown: compacted in place
}

TEST(StaticCache, DecodingStepsReuseTheBuffers) {
  auto m = decoder("gpt2", "", {});
  torch::NoGradGuard no_grad;
  models::KVCache cache;
  cache.reserve(32);
  models::Batch b;
  b.input_ids = torch::randint(61, {2, 5}, torch::kLong);
  m->forward(b, nullptr, &cache);
  const void* keys = cache.keys[0].data_ptr();
  for (int i = 0; i < 10; ++i) {
    b.input_ids = torch::randint(61, {2, 1}, torch::kLong);
    m->forward(b, nullptr, &cache);
  }
  EXPECT_EQ(cache.keys[0].data_ptr(), keys);
  EXPECT_EQ(cache.held(0), 15);
  // clear() forgets the tokens, keeps the buffers.
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  m->forward(b, nullptr, &cache);
  EXPECT_EQ(cache.keys[0].data_ptr(), keys);
  EXPECT_EQ(cache.held(0), 1);
}

models::GenerateOptions greedy(int64_t max_tokens, models::GenerateOptions::Steps steps) {
  models::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = max_tokens;
  o.steps = steps;
  return o;
}

// In double precision, so that no argmax is a near tie between the paths.
TEST(FixedSteps, GiveTheEagerTokensForEveryFamilyAndCore) {
  const std::vector<std::vector<int64_t>> prompts = {{3, 14, 15}, {9, 2, 6, 5, 35, 8, 9}, {7, 9, 3, 2, 3}};
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    auto m = decoder(c.arch, c.recast, c.layers);
    m->to(at::kCPU, at::kDouble);
    at::Generator gen = at::detail::createCPUGenerator(1);
    auto eager = greedy(12, models::GenerateOptions::Steps::Eager);
    const auto want = models::generate(*m, prompts, eager, gen);
    eager.static_cache = false;
    EXPECT_EQ(models::generate(*m, prompts, eager, gen), want) << "concatenated cache";
    for (int64_t every : {1, 5}) {
      auto fixed = greedy(12, models::GenerateOptions::Steps::Fixed);
      fixed.stream_every = every;
      std::vector<std::vector<int64_t>> streamed(prompts.size());
      const auto got = models::generate(*m, prompts, fixed, gen,
                                        [&](size_t r, int64_t id) { streamed[r].push_back(id); });
      EXPECT_EQ(got, want) << "stream every " << every;
      EXPECT_EQ(streamed, want);
    }
  }
}

TEST(FixedSteps, StopAtEosAndSlidePastTheContextAsEager) {
  for (const char* recast : {"", "t2r"}) {
    auto m = decoder("gpt2", recast, {1});
    m->to(at::kCPU, at::kDouble);
    at::Generator gen = at::detail::createCPUGenerator(1);
    auto eager = greedy(80, models::GenerateOptions::Steps::Eager);
    eager.context = 64;  // n_positions: the window slides
    const auto long_run = models::generate(*m, {{1, 2, 3}, {4, 5}}, eager, gen);
    ASSERT_EQ(long_run[0].size(), 80u);
    auto fixed = eager;
    fixed.steps = models::GenerateOptions::Steps::Fixed;
    fixed.stream_every = 7;
    EXPECT_EQ(models::generate(*m, {{1, 2, 3}, {4, 5}}, fixed, gen), long_run) << recast;
    eager.eos = fixed.eos = long_run[0][4];
    const auto stopped = models::generate(*m, {{1, 2, 3}, {4, 5}}, eager, gen);
    EXPECT_EQ(models::generate(*m, {{1, 2, 3}, {4, 5}}, fixed, gen), stopped) << recast;
    EXPECT_LT(stopped[0].size(), 80u);
    // A prompt longer than the context slides before its first token.
    std::vector<int64_t> long_prompt(70);
    for (size_t i = 0; i < long_prompt.size(); ++i) long_prompt[i] = static_cast<int64_t>(i % 61);
    eager.eos = fixed.eos = -1;
    eager.max_tokens = fixed.max_tokens = 5;
    EXPECT_EQ(models::generate(*m, {long_prompt}, fixed, gen), models::generate(*m, {long_prompt}, eager, gen));
  }
}

// The logits of each fixed step equal those of one forward over the whole
// sequence; the steps allocate no cache or state tensor.
TEST(FixedSteps, LogitsEqualTheParallelFormAndStatesStayInPlace) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    auto m = decoder(c.arch, c.recast, c.layers);
    m->to(at::kCPU, at::kDouble);
    torch::NoGradGuard no_grad;
    models::KVCache cache;
    cache.reserve(24);
    models::Batch b;
    b.input_ids = torch::randint(61, {2, 6}, torch::kLong);
    const at::Tensor prefill = m->forward(b, nullptr, &cache);
    models::FixedSteps steps(*m, cache, 2, 16, models::SamplingOptions{0.0, 0, 1.0}, std::nullopt, false);
    steps.start(prefill.select(1, 5), {}, torch::full({2, 1}, 6, torch::kLong), 0);
    std::vector<const void*> before;
    auto addresses = [&] {
      std::vector<const void*> a;
      for (const auto& t : cache.keys) a.push_back(t.defined() ? t.data_ptr() : nullptr);
      for (const auto& s : cache.linear) a.push_back(s.defined() ? s.s.data_ptr() : nullptr);
      for (const auto& w : cache.windows) a.push_back(w.defined() ? w.data_ptr() : nullptr);
      return a;
    };
    before = addresses();
    std::vector<at::Tensor> logits;
    for (int i = 0; i < 10; ++i) {
      steps.step();
      logits.push_back(steps.logits().clone());
    }
    EXPECT_EQ(addresses(), before);
    EXPECT_EQ(steps.tokens(), 16);
    steps.finish();
    EXPECT_FALSE(cache.fixed_step());
    // Tokens 0..9 of the history were fed; step i saw token i.
    models::Batch whole;
    whole.input_ids = at::cat({b.input_ids, steps.history().narrow(1, 0, 10)}, 1);
    const at::Tensor full = m->forward(whole);
    // (T2R's linear attention runs in fp32 whatever the model's dtype.)
    EXPECT_LT(max_rel(at::stack(logits, 1), full.narrow(1, 6, 10)), c.recast == std::string("t2r") ? 1e-5 : 1e-9);
    // The history is the argmax of the logits before it.
    EXPECT_TRUE(steps.history().narrow(1, 0, 10).equal(full.narrow(1, 5, 10).argmax(-1)));
  }
}

TEST(FixedSteps, RefuseAFullCacheAndAnUnreservedOne) {
  auto m = decoder("gpt2", "", {});
  torch::NoGradGuard no_grad;
  models::KVCache plain;
  EXPECT_THROW(models::FixedSteps(*m, plain, 1, 4, {}, std::nullopt, false), Error);
  models::KVCache cache;
  cache.reserve(4);
  models::Batch b;
  b.input_ids = torch::randint(61, {1, 3}, torch::kLong);
  const at::Tensor prefill = m->forward(b, nullptr, &cache);
  models::FixedSteps steps(*m, cache, 1, 4, {0.0, 0, 1.0}, std::nullopt, false);
  EXPECT_THROW(steps.step(), Error);  // not started
  steps.start(prefill.select(1, 2), {}, torch::full({1, 1}, 3, torch::kLong), 0);
  steps.step();
  EXPECT_THROW(steps.step(), Error);  // 4 positions held
}

// logits_to_keep: the last positions' logits, the same as the whole forward's.
TEST(StaticCache, LogitsToKeepProjectsTheLastPositionsOnly) {
  for (const char* arch : {"gpt2", "llama"}) {
    auto m = decoder(arch, "", {});
    torch::NoGradGuard no_grad;
    models::Batch b;
    b.input_ids = torch::randint(61, {2, 9}, torch::kLong);
    const at::Tensor all = m->forward(b);
    b.logits_to_keep = 1;
    const at::Tensor last = m->forward(b);
    ASSERT_EQ(last.sizes(), (std::vector<int64_t>{2, 1, all.size(2)})) << arch;
    EXPECT_TRUE(last.allclose(all.narrow(1, 8, 1), 1e-6, 1e-6)) << arch;
    b.logits_to_keep = 20;  // more than T: every position
    EXPECT_EQ(m->forward(b).sizes(), all.sizes());
  }
}

TEST(SampleOnDevice, KeepsWhatTopKAndTopPKeepAndSamplesTheSoftmax) {
  at::Generator gen = at::detail::createCPUGenerator(5);
  const at::Tensor logits = torch::tensor({0.1f, 2.0f, 1.9f, -1.0f, 0.5f}).expand({4000, 5});
  auto draw = [&](models::SamplingOptions o) { return models::sample_on_device(logits, o, gen); };
  EXPECT_TRUE(draw({0.0, 0, 1.0}).eq(1).all().item<bool>());
  EXPECT_TRUE(draw({1.0, 1, 1.0}).eq(1).all().item<bool>());
  EXPECT_TRUE(draw({1.0, 0, 0.3}).eq(1).all().item<bool>());  // token 1 alone holds > 0.3
  const at::Tensor two = draw({1.0, 2, 1.0});
  EXPECT_TRUE((two.eq(1) | two.eq(2)).all().item<bool>());
  // Frequencies of 4000 draws at temperature 0.7 within 0.03 of the softmax.
  const at::Tensor ids = draw({0.7, 0, 1.0});
  const at::Tensor freq = at::bincount(ids, {}, 5).to(at::kDouble) / 4000.0;
  const at::Tensor p = (logits[0].to(at::kDouble) / 0.7).softmax(0);
  EXPECT_LT((freq - p).abs().max().item<double>(), 0.03) << freq << p;
}

// On the GPU machine: the step replayed as a CUDA graph gives the eager
// fixed step's tokens and logits (fp32 and bf16; softmax, GQA + RoPE, T2R's
// fused step, a convolution window), and is captured.
TEST(FixedSteps, CudaGraphReplaysTheEagerSteps) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (runs on the GPU machine)";
  for (const Case& c : cases()) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(name(c) + (dtype == at::kFloat ? " fp32" : " bf16"));
      auto m = decoder(c.arch, c.recast, c.layers);
      m->to(c10::Device(c10::kCUDA, 0), dtype);
      torch::NoGradGuard no_grad;
      models::Batch b;
      b.input_ids = torch::randint(61, {2, 6}, torch::kLong).cuda();
      std::vector<at::Tensor> logits[2], history;
      for (bool graph : {false, true}) {
        models::KVCache cache;
        cache.reserve(40);
        const at::Tensor prefill = m->forward(b, nullptr, &cache);
        models::FixedSteps steps(*m, cache, 2, 32, {0.0, 0, 1.0}, std::nullopt, graph);
        steps.start(prefill.select(1, 5), {}, torch::full({2, 1}, 6, torch::kLong), 0);
        for (int i = 0; i < 20; ++i) {
          steps.step();
          logits[graph].push_back(steps.logits().to(at::kFloat).cpu());
        }
        EXPECT_EQ(steps.graphed(), graph);
        history.push_back(steps.history().cpu());
      }
      EXPECT_TRUE(history[0].equal(history[1])) << history[0] << history[1];
      EXPECT_LT(max_rel(at::stack(logits[1]), at::stack(logits[0])), dtype == at::kFloat ? 1e-5 : 2e-2);
    }
  }
}

}  // namespace
}  // namespace recast::testing
