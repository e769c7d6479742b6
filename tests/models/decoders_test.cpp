// Today's decoder checkpoints: RoPE scaling (llama3, linear, dynamic, yarn)
// and its refusals, Qwen2 (q/k/v biases, sliding-window layers from
// layer_types or from max_window_layers), Mistral (sliding window on every
// layer): the window is real (a token past every layer's reach changes
// nothing), the rolling cache stays at window - 1 keys and decodes exactly as
// the parallel form, with padding too. The transformers fixtures of these
// families (tools/make_fixtures.py --decoders-only) are compared in
// models_test.cpp with the others.

#include "recast/core/error.h"
#include "recast/io/checkpoint.h"
#include "recast/io/json_strict.h"
#include "recast/models/model.h"
#include "recast/models/rope.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <set>

namespace recast::testing {
namespace {

const std::string kFixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";

std::string rope_error(const nlohmann::json& config) {
  try {
    models::read_rope(config, 16, 64);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Rope, UnsupportedTypesAndParametersAreRefusedByName) {
  const std::string longrope = rope_error({{"rope_scaling", {{"rope_type", "longrope"}, {"factor", 2.0}}}});
  EXPECT_NE(longrope.find("longrope"), std::string::npos) << longrope;
  EXPECT_NE(longrope.find("not supported"), std::string::npos) << longrope;
  EXPECT_NE(rope_error({{"rope_parameters", {{"rope_type", "llama3"}, {"factor", 8.0}, {"high_freq_factor", 4.0}}}})
                .find("rope_parameters.low_freq_factor': missing"),
            std::string::npos);
  EXPECT_NE(rope_error({{"rope_scaling", {{"type", "linear"}, {"factr", 2.0}}}}).find("rope_scaling.factr"),
            std::string::npos);
  EXPECT_NE(rope_error({{"rope_scaling", {{"type", "linear"}}}}).find("rope_scaling.factor': missing"),
            std::string::npos);
  EXPECT_NE(rope_error({{"rope_scaling", {{"type", "dynamic"}, {"factor", -1}}}}).find("positive"), std::string::npos);
  EXPECT_NE(rope_error({{"rope_scaling", 3}}).find("expected an object"), std::string::npos);
  EXPECT_EQ(rope_error({{"rope_scaling", nullptr}, {"rope_theta", 5e5}}), "");
}

TEST(Rope, WhereTheParametersComeFrom) {
  // rope_scaling (4.x) over rope_parameters; rope_theta from the object, else the top level.
  models::Rope r = models::read_rope({{"rope_theta", 123.0}, {"rope_scaling", {{"type", "linear"}, {"factor", 2}}},
                                      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 7.0}}}},
                                     16, 64);
  EXPECT_EQ(r.type, "linear");
  EXPECT_EQ(r.theta, 123.0);
  r = models::read_rope({{"rope_theta", 123.0}, {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 7.0}}}},
                        16, 64);
  EXPECT_EQ(r.theta, 7.0);
  // original_max_position_embeddings: the top level wins, else the object, else max_position_embeddings.
  r = models::read_rope({{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 4.0}}}}, 16, 64);
  EXPECT_EQ(r.original_max_positions, 64);
  r = models::read_rope({{"original_max_position_embeddings", 8},
                         {"rope_parameters", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16}}}},
                        16, 64);
  EXPECT_EQ(r.original_max_positions, 8);
}

// Llama 3.1's bands: wavelengths shorter than original / high_freq_factor keep
// their frequency, longer than original / low_freq_factor are divided by
// factor, those between are blended (monotonically).
TEST(Rope, Llama3BandsAsDefined) {
  const models::Rope r = models::read_rope({{"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 500000.0},
                                                                  {"factor", 8.0}, {"low_freq_factor", 1.0},
                                                                  {"high_freq_factor", 4.0},
                                                                  {"original_max_position_embeddings", 64}}}},
                                           32, 256);
  const at::Tensor plain = models::read_rope({{"rope_theta", 500000.0}}, 32, 256).frequencies(0, at::kCPU).first;
  const at::Tensor scaled = r.frequencies(0, at::kCPU).first;
  int kept = 0, divided = 0, blended = 0;
  for (int64_t i = 0; i < plain.size(0); ++i) {
    const double f = plain[i].item<double>(), g = scaled[i].item<double>(), wavelen = 2 * M_PI / f;
    if (wavelen < 64 / 4.0) {
      EXPECT_EQ(g, f) << i;
      ++kept;
    } else if (wavelen > 64 / 1.0) {
      EXPECT_NEAR(g, f / 8, 1e-6 * f) << i;
      ++divided;
    } else {
      EXPECT_LT(g, f * (1 + 1e-6)) << i;
      EXPECT_GT(g, f / 8 * (1 - 1e-6)) << i;
      ++blended;
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
}

// Dynamic NTK: the frequencies change only once the positions pass
// max_position_embeddings.
TEST(Rope, DynamicDependsOnTheLongestPositionPastTheContext) {
  const models::Rope r = models::read_rope({{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}}, 16, 64);
  const at::Tensor a = r.frequencies(10, at::kCPU).first, b = r.frequencies(64, at::kCPU).first;
  const at::Tensor c = r.frequencies(65, at::kCPU).first, d = r.frequencies(200, at::kCPU).first;
  EXPECT_TRUE(a.equal(b));
  EXPECT_FALSE(b.equal(c));
  EXPECT_LT(d[-1].item<double>(), c[-1].item<double>());  // a larger base: lower frequencies
}

models::ModelPtr windowed(const std::string& arch, int64_t window, uint64_t seed) {
  nlohmann::json o = {{"vocab_size", 61}, {"sliding_window", window}};
  if (arch == "qwen2") o["max_window_layers"] = 0;  // every layer windowed
  return tiny_model(arch, o, seed);
}

// Two layers with window 5 reach back 2 * 4 positions: position t >= 9 does
// not see token 0; position 8 does.
TEST(SlidingWindow, ATokenPastEveryLayersReachChangesNothing) {
  for (const char* arch : {"mistral", "qwen2"}) {
    SCOPED_TRACE(arch);
    auto m = windowed(arch, 5, 3);
    torch::NoGradGuard no_grad;
    models::Batch a, b;
    a.input_ids = torch::randint(61, {1, 16}, torch::kLong);
    b.input_ids = a.input_ids.clone();
    b.input_ids[0][0] = (a.input_ids[0][0].item<int64_t>() + 1) % 61;
    const at::Tensor la = m->forward(a), lb = m->forward(b);
    EXPECT_TRUE(la.narrow(1, 9, 7).equal(lb.narrow(1, 9, 7)));
    EXPECT_FALSE(la.narrow(1, 8, 1).equal(lb.narrow(1, 8, 1)));
  }
  // Without the window every position sees token 0.
  auto full = tiny_model("llama", {{"vocab_size", 61}}, 3);
  torch::NoGradGuard no_grad;
  models::Batch a, b;
  a.input_ids = torch::randint(61, {1, 16}, torch::kLong);
  b.input_ids = a.input_ids.clone();
  b.input_ids[0][0] = (a.input_ids[0][0].item<int64_t>() + 1) % 61;
  EXPECT_FALSE(full->forward(a).narrow(1, 15, 1).equal(full->forward(b).narrow(1, 15, 1)));
}

TEST(SlidingWindow, RollingCacheKeepsWindowMinusOneKeysAndDecodesAsTheParallelForm) {
  for (const char* arch : {"mistral", "qwen2"}) {
    for (int64_t prefill : {1, 3, 9}) {
      SCOPED_TRACE(std::string(arch) + " prefill " + std::to_string(prefill));
      auto m = windowed(arch, 4, 5);
      models::KVCache cache;
      EXPECT_LT(cached_vs_full(*m, prefill, cache), 1e-5);
      ASSERT_EQ(cache.keys.size(), 2u);
      for (size_t l = 0; l < 2; ++l) EXPECT_EQ(cache.held(l), 3);
    }
  }
  // Qwen2's default: windows only from max_window_layers on (here layer 1).
  auto m = tiny_model("qwen2", {{"vocab_size", 61}}, 6);
  models::KVCache cache;
  EXPECT_LT(cached_vs_full(*m, 4, cache), 1e-5);
  EXPECT_EQ(cache.held(0), 23);
  EXPECT_EQ(cache.held(1), 4);
}

// Right padding in the parallel form and a padded prefix decoded step by
// step agree on the real tokens.
TEST(SlidingWindow, PaddedBatchDecodesAsTheParallelForm) {
  auto m = windowed("mistral", 4, 7);
  torch::NoGradGuard no_grad;
  models::Batch full;
  full.input_ids = torch::randint(61, {2, 12}, torch::kLong);
  full.attention_mask = torch::ones({2, 12}, torch::kLong);
  full.attention_mask[1].narrow(0, 0, 3).fill_(0);  // left padding on row 1
  const at::Tensor ref = m->forward(full);
  models::KVCache cache;
  models::Batch part;
  part.input_ids = full.input_ids.narrow(1, 0, 5);
  part.attention_mask = full.attention_mask.narrow(1, 0, 5);
  std::vector<at::Tensor> steps{m->forward(part, nullptr, &cache)};
  for (int64_t t = 5; t < 12; ++t) {
    part.input_ids = full.input_ids.narrow(1, t, 1);
    part.attention_mask = full.attention_mask.narrow(1, 0, t + 1);
    steps.push_back(m->forward(part, nullptr, &cache));
  }
  const at::Tensor got = at::cat(steps, 1);
  EXPECT_LT(max_rel(got.narrow(1, 3, 9), ref.narrow(1, 3, 9)), 1e-5);
}

TEST(Qwen2, BiasesOnQueryKeyValueNotOnTheOutput) {
  auto m = tiny_model("qwen2", {{"vocab_size", 61}}, 1);
  std::set<std::string> names;
  for (const auto& p : m->named_parameters(true)) names.insert(p.key());
  for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
    EXPECT_TRUE(names.count(msg("model.layers.0.self_attn.", proj, ".bias"))) << proj;
  }
  EXPECT_FALSE(names.count("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_FALSE(names.count("model.layers.0.mlp.up_proj.bias"));
  auto mistral = tiny_model("mistral", {{"vocab_size", 61}}, 1);
  for (const auto& p : mistral->named_parameters(true)) EXPECT_EQ(p.key().find(".bias"), std::string::npos) << p.key();
}

TEST(Qwen2, BadLayerTypesAreNamed) {
  nlohmann::json c = models::factory_of("qwen2").tiny;
  c["layer_types"] = {"full_attention"};
  try {
    models::create_model("qwen2", c);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer_types"), std::string::npos) << e.what();
  }
  c["layer_types"] = {"full_attention", "chunked_attention"};
  EXPECT_THROW(models::create_model("qwen2", c), Error);
}

// The transformers fixture saved layer_types; without them Qwen2's rule
// (sliding from max_window_layers on, when use_sliding_window) gives the
// same logits.
TEST(Qwen2, WindowLayersFromMaxWindowLayersWithoutLayerTypes) {
  const std::string dir = kFixtures + "/qwen2_window";
  ASSERT_TRUE(std::filesystem::exists(dir + "/config.json")) << "tests/fixtures/qwen2_window is missing";
  TempDir copy;
  nlohmann::json config = io::read_json_file(dir + "/config.json");
  ASSERT_TRUE(config.contains("layer_types"));
  config.erase("layer_types");
  write_bytes(copy.file("config.json"), config.dump());
  std::filesystem::copy_file(dir + "/model.safetensors", copy.file("model.safetensors"));
  auto a = models::load_model(dir), b = models::load_model(copy.path());
  io::TensorStore inputs = io::TensorStore::open(dir + "/inputs.safetensors");
  models::Batch batch;
  batch.input_ids = inputs.tensor("input_ids", true);
  batch.attention_mask = inputs.tensor("attention_mask", true);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(a->forward(batch).equal(b->forward(batch)));
}

}  // namespace
}  // namespace recast::testing
