// Llama-style decoders as transformers' LlamaForCausalLM names them:
// model.{embed_tokens, layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
// input_layernorm, post_attention_layernorm}, norm} + lm_head (tied or not).
// RMSNorm in fp32, rotary embeddings computed in fp32 as transformers does
// (every rope type of models/rope.h), grouped-query attention
// (num_key_value_heads < num_attention_heads).
//
// Three registrations share the modules, each with its own config table:
//   llama    attention_bias / mlp_bias;
//   qwen2    biases on q, k, v (none on o), sliding-window layers where
//            use_sliding_window (layer_types, else layers >= max_window_layers);
//   mistral  sliding_window on every layer (null: none; layer_types, which
//            transformers' Mistral ignores, are accepted and ignored too).

#include "recast/core/error.h"
#include "recast/models/decoder.h"
#include "recast/models/rope.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {
namespace {

enum class Flavor { Llama, Qwen2, Mistral };

struct LlamaConfig {
  int64_t vocab, width, inner, layers, heads, kv_heads, head_dim, positions;
  double eps;
  bool tied, qkv_bias, o_bias, mlp_bias;
  std::vector<int64_t> windows;  // per layer: the sliding window, 0 for full attention
  Rope rope;
};

// A projection slot: torch::nn::Linear unless a recast builds it.
torch::nn::AnyModule projection(Slots& slots, torch::nn::Module& parent, const std::string& prefix,
                                const char* local, int64_t in, int64_t out, bool bias) {
  Slot s;
  s.name = prefix + local, s.in = in, s.out = out, s.bias = bias;
  return slots.layer(parent, local, s, [&] {
    return torch::nn::AnyModule(torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias)));
  });
}

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t width, double epsilon) : eps(epsilon) {
    weight = register_parameter("weight", torch::ones({width}));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = x.to(at::kFloat);
    h = h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return weight * h.to(x.scalar_type());
  }
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(RMSNorm);

at::Tensor rotate_half(const at::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return at::cat({-halves[1], halves[0]}, -1);
}

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const LlamaConfig& config, int64_t layer, Slots& slots) : c(config) {
    const std::string name = msg("model.layers.", layer, ".self_attn");
    auto lin = [&](const char* local, int64_t in, int64_t out, bool bias) {
      return projection(slots, *this, name + ".", local, in, out, bias);
    };
    Slot s;
    s.name = name;
    s.attention.layer = layer, s.attention.heads = c.heads, s.attention.kv_heads = c.kv_heads;
    s.attention.head_dim = c.head_dim, s.attention.causal = true;
    s.attention.window = c.windows[static_cast<size_t>(layer)];
    s.attention.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    s.query = {name + ".q_proj", 0}, s.key = {name + ".k_proj", 0};
    s.value = {name + ".v_proj", 0}, s.output = name + ".o_proj";
    s.mixable = true, s.in = c.width, s.out = c.heads * c.head_dim, s.bias = c.qkv_bias;
    // A token mixer that takes the attention's input needs no q, k, v.
    if (!slots.mixes_input(s)) {
      q_proj = lin("q_proj", c.width, c.heads * c.head_dim, c.qkv_bias);
      k_proj = lin("k_proj", c.width, c.kv_heads * c.head_dim, c.qkv_bias);
      v_proj = lin("v_proj", c.width, c.kv_heads * c.head_dim, c.qkv_bias);
    }
    o_proj = lin("o_proj", c.heads * c.head_dim, c.width, c.o_bias);
    // A recast's core sees q and k after the rotary embedding (as LoLCATs'
    // linear attention does).
    core = slots.attention(*this, s);
  }
  // cos, sin: [B or 1, 1, T, head_dim]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const ops::AttentionMask& mask, KVCache* cache) {
    const int64_t b = x.size(0), t = x.size(1);
    at::Tensor y;
    if (core->mixes_input()) {
      y = core->mix(x, mask, cache);
    } else {
      at::Tensor q = q_proj.forward(x).view({b, t, c.heads, c.head_dim}).transpose(1, 2);
      at::Tensor k = k_proj.forward(x).view({b, t, c.kv_heads, c.head_dim}).transpose(1, 2);
      const at::Tensor v = v_proj.forward(x).view({b, t, c.kv_heads, c.head_dim}).transpose(1, 2);
      q = q * cos + rotate_half(q) * sin;
      k = k * cos + rotate_half(k) * sin;
      y = core->forward(q, k, v, mask, cache);
    }
    return o_proj.forward(y.transpose(1, 2).reshape({b, t, c.heads * c.head_dim}));
  }
  LlamaConfig c;
  // torch::nn::Linear, or a recast's layer
  torch::nn::AnyModule q_proj, k_proj, v_proj, o_proj;
  std::shared_ptr<layers::AttentionCoreImpl> core;
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  MlpImpl(const LlamaConfig& c, int64_t layer, Slots& slots) {
    auto lin = [&](const char* local, int64_t in, int64_t out) {
      return projection(slots, *this, msg("model.layers.", layer, ".mlp."), local, in, out, c.mlp_bias);
    };
    gate_proj = lin("gate_proj", c.width, c.inner);
    up_proj = lin("up_proj", c.width, c.inner);
    down_proj = lin("down_proj", c.inner, c.width);
  }
  at::Tensor forward(const at::Tensor& x) {
    return down_proj.forward(at::silu(gate_proj.forward(x)) * up_proj.forward(x));
  }
  torch::nn::AnyModule gate_proj, up_proj, down_proj;  // Linear, or a recast's layer
};
TORCH_MODULE(Mlp);

struct LayerImpl : torch::nn::Module {
  LayerImpl(const LlamaConfig& c, int64_t layer, Slots& slots) {
    self_attn = register_module("self_attn", Attention(c, layer, slots));
    mlp = register_module("mlp", Mlp(c, layer, slots));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.width, c.eps));
    post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.width, c.eps));
  }
  at::Tensor forward(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                     const ops::AttentionMask& mask, KVCache* cache) {
    x = x + self_attn(input_layernorm(x), cos, sin, mask, cache);
    return x + mlp(post_attention_layernorm(x));
  }
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(Layer);

struct BodyImpl : torch::nn::Module {
  BodyImpl(const LlamaConfig& c, Slots& slots) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab, c.width));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) layers->push_back(Layer(c, i, slots));
    norm = register_module("norm", RMSNorm(c.width, c.eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Body);

const char* flavor_name(Flavor f) {
  return f == Flavor::Qwen2 ? "qwen2" : f == Flavor::Mistral ? "mistral" : "llama";
}

// Per layer: the sliding window (0: full attention), as transformers reads
// the family's config.
std::vector<int64_t> sliding_windows(const ConfigView& v, Flavor flavor, int64_t layers) {
  std::vector<int64_t> out(static_cast<size_t>(layers), 0);
  if (flavor == Flavor::Llama) return out;
  // Absent: the family's default (4096); null: no window.
  const bool null_window = v.json().contains("sliding_window") && v.json().at("sliding_window").is_null();
  int64_t window = null_window ? 0 : v.i("sliding_window");
  if (flavor == Flavor::Qwen2 && !v.b("use_sliding_window")) window = 0;
  if (window == 0) return out;
  // Mistral ignores layer_types (transformers warns and windows every layer).
  if (flavor == Flavor::Qwen2 && v.has("layer_types")) {
    const nlohmann::json& types = v.raw("layer_types");
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = types[i].get<std::string>() == "sliding_attention" ? window : 0;
    }
  } else if (flavor == Flavor::Qwen2) {
    const int64_t first = v.i("max_window_layers");
    for (int64_t i = first; i < layers; ++i) out[static_cast<size_t>(i)] = window;
  } else {
    std::fill(out.begin(), out.end(), window);
  }
  return out;
}

class Llama : public Model {
 public:
  Llama(const nlohmann::json& config, const ConfigSpec& spec, Flavor flavor)
      : Model(flavor_name(flavor), config) {
    const ConfigView v(config, spec);
    c_.vocab = v.i("vocab_size");
    c_.width = v.i("hidden_size");
    c_.inner = v.i("intermediate_size");
    c_.layers = v.i("num_hidden_layers");
    c_.heads = v.i("num_attention_heads");
    c_.kv_heads = v.has("num_key_value_heads") ? v.i("num_key_value_heads") : c_.heads;
    c_.head_dim = v.has("head_dim") ? v.i("head_dim") : c_.width / c_.heads;
    c_.positions = v.i("max_position_embeddings");
    c_.eps = v.d("rms_norm_eps");
    c_.rope = read_rope(config, c_.head_dim, c_.positions, v.d("rope_theta"));
    c_.tied = v.b("tie_word_embeddings");
    const bool llama = flavor == Flavor::Llama;
    c_.qkv_bias = llama ? v.b("attention_bias") : flavor == Flavor::Qwen2;
    c_.o_bias = llama && v.b("attention_bias");
    c_.mlp_bias = llama && v.b("mlp_bias");
    c_.windows = sliding_windows(v, flavor, c_.layers);
    init_std_ = v.d("initializer_range");
    model_ = register_module("model", Body(c_, slots()));
    lm_head_.init(*this, c_.width, c_.vocab, c_.tied);
  }

  Task task() const override { return Task::CausalLM; }

  // transformers' LlamaPreTrainedModel init: N(0, initializer_range) for every
  // Linear and Embedding weight, RMSNorm weights 1.
  void init_weights() override {
    torch::NoGradGuard no_grad;
    const double std = init_std_;
    for (auto& item : named_parameters(true)) {
      if (slots().recast_owned(item.key())) continue;  // below
      if (item.key().find("norm") != std::string::npos) {
        item.value().fill_(1.0);
      } else if (ends_with(item.key(), ".bias")) {
        item.value().zero_();
      } else {
        item.value().normal_(0.0, std);
      }
    }
    // Layers a recast built start from what the dense layer would have drawn.
    slots().init_recast_layers([&](const Slot& s) {
      return DenseInit{torch::randn({s.out, s.in}) * std, s.bias ? torch::zeros({s.out}) : at::Tensor()};
    });
  }
  int64_t context_length() const override { return c_.positions; }
  std::vector<std::string> tied_names() const override { return lm_head_.tied_names(); }
  bool ignorable(const std::string& name) const override {
    return name.find(".rotary_emb.inv_freq") != std::string::npos;
  }

  at::Tensor forward(const Batch& batch, Recorder* rec, KVCache* cache) override {
    const auto [ids, mask, positions] =
        decoder_inputs(batch, c_.vocab, std::numeric_limits<int64_t>::max(), cache);
    at::Tensor x = model_->embed_tokens(ids);
    auto [cos, sin] = rotary(positions, x);
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      x = model_->layers[i]->as<Layer>()->forward(x, cos, sin, mask, cache);
      if (rec) rec->record(msg("model.layers.", i), x);
    }
    if (cache) cache->tokens += ids.size(1);
    x = model_->norm(x);
    if (rec) rec->record("model.norm", x);
    return lm_head_(last_positions(x, batch.logits_to_keep), model_->embed_tokens->weight);
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {at::randint(c_.vocab, {batch_size, 16}, gen, at::kLong), {}, {}, {}, {}};
  }

 private:
  // cos, sin [B or 1, 1, T, head_dim] for positions [B or 1, T], in fp32 as
  // transformers computes them, then cast to the activations' dtype.
  // Dynamic RoPE depends on the forward's largest position (read from the
  // device only for that type).
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& positions,
                                           const at::Tensor& like) const {
    const int64_t seq_len = c_.rope.type == "dynamic" ? positions.max().item<int64_t>() + 1 : 0;
    const auto [inv_freq, scale] = c_.rope.frequencies(seq_len, like.device());
    at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, head_dim / 2]
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);              // [B, 1, T, head_dim]
    return {(emb.cos() * scale).to(like.scalar_type()), (emb.sin() * scale).to(like.scalar_type())};
  }

  LlamaConfig c_;
  double init_std_ = 0.02;
  Body model_{nullptr};
  LmHead lm_head_;
};

ConfigSpec decoder_spec(Flavor flavor) {
  ConfigSpec spec;
  spec.style = ConfigStyle::Transformers;
  const bool llama = flavor == Flavor::Llama, qwen2 = flavor == Flavor::Qwen2;
  // The defaults of transformers' LlamaConfig / Qwen2Config / MistralConfig.
  spec.keys = {
      int_key("vocab_size", llama ? 32000 : qwen2 ? 151936 : 32000, 1, 1 << 24),
      int_key("hidden_size", 4096, 1, 1 << 17),
      int_key("intermediate_size", llama ? 11008 : qwen2 ? 22016 : 14336, 1, 1 << 20),
      int_key("num_hidden_layers", 32, 1, 4096),
      int_key("num_attention_heads", 32, 1, 4096),
      int_key("num_key_value_heads", llama ? nlohmann::json() : nlohmann::json(qwen2 ? 32 : 8), 1, 4096),
      int_key("head_dim", nullptr, 2, 4096),
      int_key("max_position_embeddings", llama ? 2048 : qwen2 ? 32768 : 4096 * 32, 1, 1 << 24),
      double_key("rms_norm_eps", 1e-6, 0, 1),
      double_key("rope_theta", 10000.0, 1e-12, 1e12),
      any_key("rope_scaling"),
      any_key("rope_parameters"),
      int_key("original_max_position_embeddings", nullptr, 1, 1 << 24),
      bool_key("tie_word_embeddings", false),
      string_key("hidden_act", "silu", {"silu"}),
      double_key("partial_rotary_factor", 1.0, 1.0, 1.0),
      double_key("initializer_range", 0.02, 0, 10),
      // Accepted, not used (no dropout).
      ignored_key("attention_dropout"), ignored_key("gradient_checkpointing")};
  if (llama) {
    spec.keys.push_back(bool_key("attention_bias", false));
    spec.keys.push_back(bool_key("mlp_bias", false));
    spec.keys.push_back(ignored_key("pretraining_tp"));  // only splits matmuls
  } else {
    spec.keys.push_back(int_key("sliding_window", 4096, 1, 1 << 30));
    spec.keys.push_back(any_key("layer_types"));
  }
  if (qwen2) {
    spec.keys.push_back(bool_key("use_sliding_window", false));
    spec.keys.push_back(int_key("max_window_layers", 28, 0, 1 << 20));
  }
  spec.checks.push_back([](const ConfigView& v) {
    const int64_t heads = v.i("num_attention_heads");
    const int64_t kv = v.has("num_key_value_heads") ? v.i("num_key_value_heads") : heads;
    RECAST_CHECK(heads % kv == 0, "config key 'num_key_value_heads': num_attention_heads ", heads,
                 " is not a multiple of num_key_value_heads ", kv);
    if (!v.has("head_dim")) {
      RECAST_CHECK(v.i("hidden_size") % heads == 0, "config key 'num_attention_heads': hidden_size ",
                   v.i("hidden_size"), " is not a multiple of num_attention_heads ", heads);
    }
    const int64_t head_dim = v.has("head_dim") ? v.i("head_dim") : v.i("hidden_size") / heads;
    RECAST_CHECK(head_dim % 2 == 0, "config key 'head_dim': ", head_dim,
                 " must be even for rotary embeddings");
    read_rope(v.json(), head_dim, v.i("max_position_embeddings"), v.d("rope_theta"));
    if (v.spec().find("layer_types") && v.has("layer_types")) {
      const nlohmann::json& types = v.raw("layer_types");
      RECAST_CHECK(types.is_array() && static_cast<int64_t>(types.size()) == v.i("num_hidden_layers"),
                   "config key 'layer_types': expected a list of num_hidden_layers (", v.i("num_hidden_layers"),
                   ") entries, found ", types.dump());
      for (const auto& t : types) {
        RECAST_CHECK(t.is_string() && (t == "full_attention" || t == "sliding_attention"),
                     "config key 'layer_types': expected \"full_attention\" or \"sliding_attention\", found ",
                     t.dump());
      }
    }
  });
  spec.parameters = [](const ConfigView& v) {
    const double w = static_cast<double>(v.i("hidden_size"));
    const double heads = static_cast<double>(v.i("num_attention_heads"));
    const double kv = v.has("num_key_value_heads") ? static_cast<double>(v.i("num_key_value_heads")) : heads;
    const double d = v.has("head_dim") ? static_cast<double>(v.i("head_dim")) : w / heads;
    const double per_layer = w * d * (2 * heads + 2 * kv) + 3 * w * static_cast<double>(v.i("intermediate_size"));
    return 2 * static_cast<double>(v.i("vocab_size")) * w +
           static_cast<double>(v.i("num_hidden_layers")) * per_layer;
  };
  return spec;
}

ModelFactory decoder_factory(Flavor flavor) {
  ModelFactory f;
  f.style = ConfigStyle::Transformers;
  f.spec = decoder_spec(flavor);
  f.make = [spec = f.spec, flavor](const nlohmann::json& c) { return std::make_shared<Llama>(c, spec, flavor); };
  f.tasks = {Task::CausalLM};
  f.heads = {"lm_head."};
  f.fit = [](const DataFacts& d, bool head_only) {
    std::vector<std::pair<std::string, nlohmann::json>> out;
    if (head_only) return out;
    out.emplace_back("vocab_size", d.vocab);
    if (d.eos >= 0) out.emplace_back("bos_token_id", d.eos), out.emplace_back("eos_token_id", d.eos);
    out.emplace_back("max_position_embeddings", std::max<int64_t>(d.seq_len, 128));
    return out;
  };
  f.tiny = {{"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 50},
            {"max_position_embeddings", 64}};
  // The tiny models exercise the windows: shorter than the tests' inputs.
  if (flavor == Flavor::Qwen2) {
    f.tiny["use_sliding_window"] = true, f.tiny["sliding_window"] = 5, f.tiny["max_window_layers"] = 1;
  }
  if (flavor == Flavor::Mistral) f.tiny["sliding_window"] = 5;
  return f;
}

}  // namespace

RECAST_REGISTER_MODEL(llama) {
  r.add("llama", "Llama-style decoder (transformers LlamaForCausalLM: RMSNorm, RoPE, SwiGLU, GQA)",
        decoder_factory(Flavor::Llama));
  r.add("qwen2", "Qwen2 / Qwen2.5 decoder (transformers Qwen2ForCausalLM: Llama with q/k/v biases, "
        "sliding-window layers)", decoder_factory(Flavor::Qwen2));
  r.add("mistral", "Mistral decoder (transformers MistralForCausalLM: Llama with sliding-window attention)",
        decoder_factory(Flavor::Mistral));
}

}  // namespace recast::models
