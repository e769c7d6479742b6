// Pretrained convolutions (recast conv): convolution blocks in GPT-2, Llama
// (grouped-query) and T5 (encoder centred, decoder causal) decode token by
// token exactly as the full sequence, for every kind; greedy decoding
// reproduces the argmax of a parallel forward; a left-padded batch generates
// what each prompt generates alone; the recipe drops q, k, v, keeps every
// other weight, starts the GLU as the value projection and reports each
// layer against the attention it replaced; bad config blocks are named.

#include "recast/layers/conv_mixer.h"
#include "recast/models/generate.h"
#include "recast/models/model.h"
#include "recast/models/seq2seq.h"
#include "recast/recasts/recast.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

struct Kind {
  const char* kind;
  int64_t kernel, dilation;
  const char* normalize;
};
const Kind kKinds[] = {{"lightweight", 4, 1, "softmax"}, {"dynamic", 3, 1, "softmax"},
                       {"dilated", 3, 2, "none"}, {"dilated", 5, 3, "softmax"}};

nlohmann::json block(const Kind& k, const std::vector<std::string>& modules) {
  return {{"kind", k.kind},           {"modules", modules},   {"kernel_size", k.kernel},
          {"heads", 0},               {"dilation", k.dilation}, {"normalize", k.normalize},
          {"weight_dropout", 0.0}};
}

std::vector<std::string> decoder_attentions(const std::string& arch, int64_t layers) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < layers; ++i) {
    out.push_back(arch == "gpt2" ? msg("transformer.h.", i, ".attn") : msg("model.layers.", i, ".self_attn"));
  }
  return out;
}

models::ModelPtr tiny_decoder(const std::string& arch, const nlohmann::json& conv) {
  nlohmann::json c = {{"vocab_size", 61}};
  if (arch == "gpt2") c["n_layer"] = 3;
  if (!conv.is_null()) c["recast_conv"] = conv;
  return tiny_model(arch, c, 5);
}

// Prefill 7 tokens, then one at a time from the windows.
void expect_incremental_equals_full(models::Model& m, bool all_conv = true) {
  models::KVCache cache;
  EXPECT_LT(cached_vs_full(m, 7, cache), 1e-5);
  if (all_conv) {
    EXPECT_TRUE(cache.keys.empty());  // no layer keeps keys
  }
}

TEST(Conv, DecodersTokenByTokenEqualFullSequence) {
  for (const char* arch : {"gpt2", "llama", "qwen2", "mistral"}) {
    for (const Kind& k : kKinds) {
      SCOPED_TRACE(std::string(arch) + " " + k.kind + " K=" + std::to_string(k.kernel));
      const int64_t layers = std::string(arch) == "gpt2" ? 3 : 2;
      auto m = tiny_decoder(arch, block(k, decoder_attentions(arch, layers)));
      expect_incremental_equals_full(*m);
    }
  }
  // A hybrid: layer 1 conv, the others softmax with their KV cache.
  auto hybrid = tiny_decoder("gpt2", block(kKinds[0], {"transformer.h.1.attn"}));
  expect_incremental_equals_full(*hybrid, false);
}

TEST(Conv, MemoryPerSequenceIsConstantWhateverTheLength) {
  auto m = tiny_decoder("gpt2", block(kKinds[1], decoder_attentions("gpt2", 3)));
  torch::NoGradGuard no_grad;
  models::KVCache cache;
  models::Batch b;
  b.input_ids = torch::randint(61, {1, 10}, torch::kLong);
  m->forward(b, nullptr, &cache);
  ASSERT_EQ(cache.windows.size(), 3u);
  const auto size = cache.windows[0].sizes().vec();
  EXPECT_EQ(size, (std::vector<int64_t>{1, 2, 32}));  // d (K - 1) = 2 GLU outputs of 32 channels
  for (int i = 0; i < 30; ++i) {
    b.input_ids = torch::randint(61, {1, 1}, torch::kLong);
    m->forward(b, nullptr, &cache);
  }
  EXPECT_EQ(cache.windows[0].sizes().vec(), size);
  EXPECT_TRUE(cache.keys.empty());
}

TEST(Conv, GreedyDecodingReproducesTheArgmaxOfAParallelForward) {
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(k.kind);
    auto m = tiny_decoder("gpt2", block(k, decoder_attentions("gpt2", 3)));
    torch::NoGradGuard no_grad;
    models::GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = 12;
    at::Generator gen = at::detail::createCPUGenerator(1);
    const std::vector<int64_t> prompt = {3, 14, 15};
    const auto out = models::generate(*m, {prompt}, o, gen);
    std::vector<int64_t> seq = prompt;
    seq.insert(seq.end(), out[0].begin(), out[0].end());
    models::Batch whole;
    whole.input_ids = torch::tensor(seq).view({1, -1});
    const at::Tensor full = m->forward(whole);
    for (size_t t = prompt.size() - 1; t + 1 < seq.size(); ++t) {
      EXPECT_EQ(full[0][static_cast<int64_t>(t)].argmax().item<int64_t>(), seq[t + 1]) << "position " << t;
    }
  }
}

TEST(Conv, ALeftPaddedBatchContinuesEachPromptAsAlone) {
  for (const char* arch : {"gpt2", "llama"}) {
    SCOPED_TRACE(arch);
    const int64_t layers = std::string(arch) == "gpt2" ? 3 : 2;
    auto m = tiny_decoder(arch, block(kKinds[1], decoder_attentions(arch, layers)));
    const std::vector<std::vector<int64_t>> prompts = {{3, 14, 15}, {9, 2, 6, 5, 35, 8, 9}, {7, 9, 3, 2, 3}};
    models::GenerateOptions o;
    o.sampling.temperature = 0;
    o.max_tokens = 8;
    at::Generator gen = at::detail::createCPUGenerator(1);
    const auto together = models::generate(*m, prompts, o, gen);
    for (size_t r = 0; r < prompts.size(); ++r) {
      EXPECT_EQ(together[r], models::generate(*m, {prompts[r]}, o, gen)[0]) << "row " << r;
    }
  }
}

// T5: conv blocks in the encoder (centred) and the decoder (causal); the
// cross-attention stays softmax. Cached decoding equals the full decoder, and
// padding in the encoder changes nothing of the real tokens' states.
TEST(Conv, T5EncoderCentredDecoderCausal) {
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(k.kind);
    const std::vector<std::string> modules = {
        "encoder.block.0.layer.0.SelfAttention", "encoder.block.1.layer.0.SelfAttention",
        "decoder.block.0.layer.0.SelfAttention", "decoder.block.1.layer.0.SelfAttention"};
    auto base = tiny_model("t5", {{"recast_conv", block(k, modules)}}, 9);
    auto* m = dynamic_cast<models::Seq2SeqModel*>(base.get());
    ASSERT_NE(m, nullptr);
    auto params = m->named_parameters(true);
    EXPECT_FALSE(params.contains("encoder.block.0.layer.0.SelfAttention.q.weight"));
    EXPECT_TRUE(params.contains("decoder.block.0.layer.1.EncDecAttention.q.weight"));
    EXPECT_TRUE(params.contains("encoder.block.1.layer.0.SelfAttention.conv_glu.weight"));
    torch::NoGradGuard no_grad;
    models::Batch b;
    b.input_ids = torch::randint(60, {2, 11}, torch::kLong);
    b.attention_mask = torch::ones({2, 11}, torch::kLong);
    b.attention_mask[1].narrow(0, 8, 3).zero_();
    const at::Tensor memory = m->encode(b);
    // Row 1's last 3 tokens are padding: its first 8 states are those of the
    // 8 tokens alone.
    models::Batch alone;
    alone.input_ids = b.input_ids[1].narrow(0, 0, 8).unsqueeze(0);
    EXPECT_LT(max_rel(m->encode(alone)[0], memory[1].narrow(0, 0, 8)), 1e-5);
    const at::Tensor dec = torch::randint(60, {2, 9}, torch::kLong);
    const at::Tensor full = m->decode(dec, memory, b.attention_mask, nullptr, nullptr);
    models::KVCache cache;
    std::vector<at::Tensor> steps{m->decode(dec.narrow(1, 0, 2), memory, b.attention_mask, nullptr, &cache)};
    for (int64_t t = 2; t < 9; ++t) {
      steps.push_back(m->decode(dec.narrow(1, t, 1), memory, b.attention_mask, nullptr, &cache));
    }
    EXPECT_LT(max_rel(at::cat(steps, 1), full), 1e-5);
  }
}

// A tiny "pretrained" model, then the recipe on it.
models::ModelPtr source_model(const std::string& arch, uint64_t seed) {
  auto m = tiny_model(arch, {{"vocab_size", 61}}, seed);
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters(true)) {
    if (p.key().find("bias") != std::string::npos) p.value().normal_(0, 0.1);  // GPT-2's are zero
  }
  return m;
}

recasts::RecipeOptions recipe_options(const nlohmann::json& values, const std::string& layers = "") {
  recasts::RecipeOptions o;
  o.values = values.is_null() ? nlohmann::json::object() : values;
  o.layers = layers;
  o.probe.input_ids = torch::randint(61, {2, 16}, torch::kLong);
  return o;
}

TEST(Conv, RecipeDropsQkvKeepsTheRestAndStartsFromTheValues) {
  for (const char* arch : {"gpt2", "llama", "qwen2", "mistral"}) {
    SCOPED_TRACE(arch);
    auto source = source_model(arch, 3);
    // K = 1: the block is x W_V through the output projection.
    auto c = recasts::get("conv").convert(*source, recipe_options({{"conv", "lightweight"}, {"kernel", 1}}));
    ASSERT_EQ(c.report.size(), std::string(arch) == "gpt2" ? 2u : 2u);
    auto converted = c.model->named_parameters(true);
    int64_t dropped = 0;
    for (const auto& p : source->named_parameters(true)) {
      const bool qkv = p.key().find("c_attn") != std::string::npos || p.key().find("q_proj") != std::string::npos ||
                       p.key().find("k_proj") != std::string::npos || p.key().find("v_proj") != std::string::npos;
      if (qkv) {
        EXPECT_FALSE(converted.contains(p.key())) << p.key();
        ++dropped;
        continue;
      }
      ASSERT_TRUE(converted.contains(p.key())) << p.key();
      EXPECT_TRUE(torch::equal(converted[p.key()], p.value())) << p.key();
    }
    EXPECT_GT(dropped, 0);
    EXPECT_EQ(c.manifest["dropped_tensors"].size(), static_cast<size_t>(dropped));
    // At position 0 causal attention returns v_0, and so does a K = 1 block
    // starting from the values (one head group of Llama's shares a kv head).
    for (auto& b : c.model->slots().built()) {
      auto* core = dynamic_cast<layers::ConvMixerImpl*>(b.module.get());
      if (core == nullptr) continue;
      torch::NoGradGuard no_grad;
      const at::Tensor x = torch::randn({2, 5, 32});
      const at::Tensor y = core->mix(x, ops::AttentionMask(), nullptr);  // [B, H, T, d]
      at::Tensor v;
      for (auto& s : source->slots().built()) {
        if (s.slot.name == b.slot.value.slot) {
          auto sp = s.module->named_parameters(false);
          at::Tensor w = sp["weight"];
          if (s.slot.transposed) w = w.t();
          at::Tensor rows = w.narrow(0, b.slot.value.row, b.slot.attention.kv_heads * b.slot.attention.head_dim);
          v = at::linear(x, rows, sp.contains("bias") ? sp["bias"].narrow(0, b.slot.value.row, rows.size(0)) : at::Tensor());
        }
      }
      ASSERT_TRUE(v.defined());
      const int64_t groups = b.slot.attention.heads / b.slot.attention.kv_heads, d = b.slot.attention.head_dim;
      v = v.view({2, 5, -1, d}).transpose(1, 2).repeat_interleave(groups, 1);
      EXPECT_LT(max_rel(y, v), 1e-6) << b.slot.name;
    }
    // Each layer is reported against the attention it replaced.
    for (const auto& r : c.report) {
      EXPECT_GT(r.relative_error, 0.0);
      EXPECT_TRUE(std::isfinite(r.relative_error));
      EXPECT_NE(r.replaced.find("softmax attention -> lightweight conv (K 1"), std::string::npos) << r.replaced;
    }
    // The converted model is an ordinary checkpoint of its family: built
    // again from its config, every tensor has a place.
    auto again = models::create_model(arch, c.model->config());
    for (const auto& p : c.model->named_parameters(true)) {
      EXPECT_TRUE(again->named_parameters(true).contains(p.key())) << p.key();
    }
  }
}

TEST(Conv, RecipeKernelsPerLayerHeadsAndMisuse) {
  auto source = source_model("gpt2", 4);
  auto c = recasts::get("conv").convert(
      *source, recipe_options({{"conv", "dynamic"}, {"kernels", "3,7"}, {"heads", 2}}));
  EXPECT_EQ(c.model->config()["recast_conv"]["kernel_size"], nlohmann::json::array({3, 7}));
  auto params = c.model->named_parameters(true);
  EXPECT_EQ(params["transformer.h.1.attn.conv.weight"].sizes().vec(), (std::vector<int64_t>{2 * 7, 32}));
  auto err = [&](const nlohmann::json& v, const std::string& layers = "") {
    return error_of([&] { recasts::get("conv").convert(*source, recipe_options(v, layers)); });
  };
  EXPECT_NE(err({{"kernels", "3,7,15"}}).find("3 widths for the 2 converted layers"), std::string::npos);
  EXPECT_NE(err({{"kernels", "3,x"}}).find("--kernels"), std::string::npos);
  EXPECT_NE(err({{"conv", "sparse"}}).find("--conv 'sparse'"), std::string::npos);
  EXPECT_NE(err({{"dilation", 2}}).find("--dilation is for --conv dilated"), std::string::npos);
  EXPECT_NE(err({{"heads", 5}}).find("--heads 5"), std::string::npos);
  EXPECT_NE(err({{"normalize", "none"}}).find("--normalize"), std::string::npos);
  EXPECT_NE(err({{"glu_init", "zeros"}}).find("--glu-init 'zeros'"), std::string::npos);
  // The baseline init: the family's fresh draw, W2 not zero.
  auto random = recasts::get("conv").convert(*source, recipe_options({{"glu_init", "random"}, {"kernel", 3}}));
  const at::Tensor w = random.model->named_parameters(true)["transformer.h.0.attn.conv_glu.weight"];
  EXPECT_GT(w.narrow(0, 32, 32).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(random.manifest["init"], "random: the family's init from scratch");
  EXPECT_NE(err({{"conv", "dilated"}, {"heads", 2}}).find("--heads is for --conv lightweight or dynamic"),
            std::string::npos);
  EXPECT_NE(err({{"transfer_steps", 3}}).find("--transfer-steps needs --data"), std::string::npos);
  EXPECT_NE(err({}, "layer4").find("matches none"), std::string::npos);
  EXPECT_NE(error_of([&] { recasts::get("conv").convert(*c.model, recipe_options({})); }).find("already converted"),
            std::string::npos);
}

TEST(Conv, FromScratchConfigsTrainAndBadBlocksAreNamed) {
  auto m = tiny_decoder("llama", block(kKinds[0], decoder_attentions("llama", 2)));
  auto params = m->named_parameters(true);
  EXPECT_FALSE(params.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_EQ(params["model.layers.0.self_attn.conv_glu.weight"].sizes().vec(), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(params["model.layers.0.self_attn.conv.weight"].sizes().vec(), (std::vector<int64_t>{4, 4}));
  // A training step reaches every conv tensor.
  models::Batch b;
  b.input_ids = torch::randint(61, {2, 9}, torch::kLong);
  m->train();
  m->forward(b).logsumexp(-1).mean().backward();
  for (const auto& p : m->named_parameters(true)) {
    if (p.key().find(".conv") != std::string::npos) {
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
    }
  }
  auto bad = [&](const std::string& arch, nlohmann::json blk) {
    return error_of([&] { tiny_decoder(arch, blk); });
  };
  nlohmann::json b0 = block(kKinds[0], {"transformer.h.7.attn"});
  EXPECT_NE(bad("gpt2", b0).find("no self-attention named 'transformer.h.7.attn' (they are named like "
                                 "'transformer.h.0.attn')"),
            std::string::npos);
  b0 = block(kKinds[0], {"transformer.h.0.attn"});
  b0["kind"] = "sparse";
  EXPECT_NE(bad("gpt2", b0).find("kind 'sparse'"), std::string::npos);
  b0["kind"] = "lightweight";
  b0["kernel_size"] = {3, 5};
  EXPECT_NE(bad("gpt2", b0).find("kernel_size has 2 widths for 1 modules"), std::string::npos);
  b0["kernel_size"] = 3;
  b0["heads"] = 5;
  EXPECT_NE(bad("gpt2", b0).find("32 channels do not split into 5 kernel heads"), std::string::npos);
  b0["heads"] = 0;
  b0["typo"] = 1;
  EXPECT_NE(bad("gpt2", b0).find("unknown key 'typo'"), std::string::npos);
  EXPECT_NE(error_of([&] {
              tiny_model("vit_tiny_patch16_224", {{"recast_conv", block(kKinds[0], {"blocks.0.attn"})}});
            }).find("'blocks.0.attn' is an attention this family cannot replace"),
            std::string::npos);
}

}  // namespace
}  // namespace recast::testing
