// Llama-style decoders as transformers' LlamaForCausalLM names them:
// model.{embed_tokens, layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
// input_layernorm, post_attention_layernorm}, norm} + lm_head (tied or not).
// RMSNorm in fp32, rotary embeddings computed in fp32 as transformers does,
// grouped-query attention (num_key_value_heads < num_attention_heads).

#include "recast/core/error.h"
#include "recast/models/decoder.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {
namespace {

struct LlamaConfig {
  int64_t vocab, width, inner, layers, heads, kv_heads, head_dim, positions;
  double eps, rope_theta;
  bool tied, attention_bias, mlp_bias;
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

// rope_theta sits at the top level (transformers 4.x) or in rope_parameters (5.x).
double read_rope_theta(const nlohmann::json& config) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (!it->is_object()) throw Error(msg("config key '", key, "': expected an object"));
    std::string type = cfg_string(*it, "rope_type", cfg_string(*it, "type", "default"));
    if (type != "default") {
      throw Error(msg("config key '", key, "': rope_type ", quote(type),
                      " is not supported yet (supported: default)"));
    }
    if (it->contains("rope_theta")) return cfg_double(*it, "rope_theta");
  }
  return cfg_double(config, "rope_theta", 10000.0);
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
    auto lin = [&](const char* local, int64_t in, int64_t out) {
      return projection(slots, *this, name + ".", local, in, out, c.attention_bias);
    };
    Slot s;
    s.name = name;
    s.attention.layer = layer, s.attention.heads = c.heads, s.attention.kv_heads = c.kv_heads;
    s.attention.head_dim = c.head_dim, s.attention.causal = true;
    s.attention.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    s.query = {name + ".q_proj", 0}, s.key = {name + ".k_proj", 0};
    s.value = {name + ".v_proj", 0}, s.output = name + ".o_proj";
    s.mixable = true, s.in = c.width, s.out = c.heads * c.head_dim, s.bias = c.attention_bias;
    // A token mixer that takes the attention's input needs no q, k, v.
    if (!slots.mixes_input(s)) {
      q_proj = lin("q_proj", c.width, c.heads * c.head_dim);
      k_proj = lin("k_proj", c.width, c.kv_heads * c.head_dim);
      v_proj = lin("v_proj", c.width, c.kv_heads * c.head_dim);
    }
    o_proj = lin("o_proj", c.heads * c.head_dim, c.width);
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

class Llama : public Model {
 public:
  Llama(const nlohmann::json& config, const ConfigSpec& spec) : Model("llama", config) {
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
    c_.rope_theta = read_rope_theta(config);
    c_.tied = v.b("tie_word_embeddings");
    c_.attention_bias = v.b("attention_bias");
    c_.mlp_bias = v.b("mlp_bias");
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
    const int64_t offset = cache ? cache->length() : 0;
    const at::Tensor ids =
        check_input_ids(batch, c_.vocab, std::numeric_limits<int64_t>::max(), offset);
    ops::AttentionMask mask = decoder_mask(batch, ids, offset);
    at::Tensor x = model_->embed_tokens(ids);
    auto [cos, sin] =
        rotary(decoder_positions(batch, ids, offset, std::numeric_limits<int64_t>::max()), x);
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      x = model_->layers[i]->as<Layer>()->forward(x, cos, sin, mask, cache);
      if (rec) rec->record(msg("model.layers.", i), x);
    }
    if (cache) cache->tokens += ids.size(1);
    x = model_->norm(x);
    if (rec) rec->record("model.norm", x);
    return lm_head_(x, model_->embed_tokens->weight);
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {at::randint(c_.vocab, {batch_size, 16}, gen, at::kLong), {}, {}, {}, {}};
  }

 private:
  // cos, sin [B or 1, 1, T, head_dim] for positions [B or 1, T], in fp32 as
  // transformers computes them, then cast to the activations' dtype.
  std::pair<at::Tensor, at::Tensor> rotary(const at::Tensor& positions,
                                           const at::Tensor& like) const {
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(like.device());
    at::Tensor exponents = at::arange(0, c_.head_dim, 2, f32.dtype(at::kLong)).to(at::kFloat) /
                           static_cast<double>(c_.head_dim);
    at::Tensor inv_freq = 1.0 / at::pow(c_.rope_theta, exponents);
    at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, head_dim / 2]
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);              // [B, 1, T, head_dim]
    return {emb.cos().to(like.scalar_type()), emb.sin().to(like.scalar_type())};
  }

  LlamaConfig c_;
  double init_std_ = 0.02;
  Body model_{nullptr};
  LmHead lm_head_;
};

ConfigSpec llama_spec() {
  ConfigSpec spec;
  spec.style = ConfigStyle::Transformers;
  spec.keys = {
      int_key("vocab_size", 32000, 1, 1 << 24),
      int_key("hidden_size", 4096, 1, 1 << 17),
      int_key("intermediate_size", 11008, 1, 1 << 20),
      int_key("num_hidden_layers", 32, 1, 4096),
      int_key("num_attention_heads", 32, 1, 4096),
      int_key("num_key_value_heads", nullptr, 1, 4096),
      int_key("head_dim", nullptr, 2, 4096),
      int_key("max_position_embeddings", 2048, 1, 1 << 24),
      double_key("rms_norm_eps", 1e-6, 0, 1),
      double_key("rope_theta", 10000.0, 1e-12, 1e12),
      any_key("rope_scaling"),
      any_key("rope_parameters"),
      bool_key("tie_word_embeddings", false),
      bool_key("attention_bias", false),
      bool_key("mlp_bias", false),
      string_key("hidden_act", "silu", {"silu"}),
      double_key("partial_rotary_factor", 1.0, 1.0, 1.0),
      double_key("initializer_range", 0.02, 0, 10),
      // Accepted, not used (no dropout; pretraining_tp only splits matmuls).
      ignored_key("attention_dropout"), ignored_key("pretraining_tp"),
      ignored_key("gradient_checkpointing")};
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
    read_rope_theta(v.json());
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

}  // namespace

RECAST_REGISTER_MODEL(llama) {
  ModelFactory f;
  f.style = ConfigStyle::Transformers;
  f.spec = llama_spec();
  f.make = [spec = f.spec](const nlohmann::json& c) { return std::make_shared<Llama>(c, spec); };
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
  r.add("llama", "Llama-style decoder (transformers LlamaForCausalLM: RMSNorm, RoPE, SwiGLU, GQA)", f);
}

}  // namespace recast::models
