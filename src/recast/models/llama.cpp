// Llama-style decoders as transformers' LlamaForCausalLM names them:
// model.{embed_tokens, layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
// input_layernorm, post_attention_layernorm}, norm} + lm_head (tied or not).
// RMSNorm in fp32, rotary embeddings computed in fp32 as transformers does,
// grouped-query attention (num_key_value_heads < num_attention_heads).

#include "recast/core/error.h"
#include "recast/models/decoder.h"
#include "recast/layers/factorized.h"
#include "recast/layers/linear_attention.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {
namespace {

struct LlamaConfig {
  int64_t vocab, width, inner, layers, heads, kv_heads, head_dim, positions;
  double eps, rope_theta;
  bool tied, attention_bias, mlp_bias;
  std::optional<layers::T2RConfig> t2r;  // layers recast to linear attention (T2R)
  std::optional<layers::FactorizedConfig> factorized;  // low-rank projections
};

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
  AttentionImpl(const LlamaConfig& config, int64_t layer_index) : c(config), layer(layer_index) {
    auto lin = [&](const char* name, int64_t in, int64_t out) {
      torch::nn::AnyModule m = layers::linear_slot(
          c.factorized, msg("model.layers.", layer_index, ".self_attn.", name), in, out, c.attention_bias);
      register_module(name, m.ptr());
      return m;
    };
    q_proj = lin("q_proj", c.width, c.heads * c.head_dim);
    k_proj = lin("k_proj", c.width, c.kv_heads * c.head_dim);
    v_proj = lin("v_proj", c.width, c.kv_heads * c.head_dim);
    o_proj = lin("o_proj", c.heads * c.head_dim, c.width);
    if (c.t2r && c.t2r->linear(layer_index)) {
      feature_map = register_module(
          "feature_map", layers::FeatureMap(c.t2r->feature_map, c.heads, c.head_dim, c.t2r->features));
    }
  }
  // cos, sin: [B or 1, 1, T, head_dim]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     const ops::AttentionMask& mask, KVCache* cache) {
    const int64_t b = x.size(0), t = x.size(1);
    at::Tensor q = q_proj.forward(x).view({b, t, c.heads, c.head_dim}).transpose(1, 2);
    at::Tensor k = k_proj.forward(x).view({b, t, c.kv_heads, c.head_dim}).transpose(1, 2);
    at::Tensor v = v_proj.forward(x).view({b, t, c.kv_heads, c.head_dim}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
    at::Tensor y;
    if (feature_map) {
      // T2R on a rotary model: RoPE is applied to q and k before the feature
      // map (as LoLCATs does), so phi sees the rotated vectors; grouped key /
      // value heads are repeated to the query heads first.
      const int64_t groups = c.heads / c.kv_heads;
      at::Tensor padding;
      if (mask.key_padding.defined()) padding = mask.key_padding.narrow(1, mask.query_offset, t);
      y = layers::t2r_attention(feature_map, q, ops::repeat_kv(k, groups), ops::repeat_kv(v, groups),
                                padding, *c.t2r,
                                cache ? &cache->linear_state(static_cast<size_t>(layer)) : nullptr);
      if (probe.on) {
        RECAST_CHECK(cache == nullptr, "attention transfer runs without a KV cache");
        y = probe.compare(y, ops::attention(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(c.head_dim))));
      }
    } else {
      if (cache != nullptr) std::tie(k, v) = append_kv(*cache, layer, k, v);
      y = ops::attention(q, k, v, mask, 1.0 / std::sqrt(static_cast<double>(c.head_dim)));
    }
    return o_proj.forward(y.transpose(1, 2).reshape({b, t, c.heads * c.head_dim}));
  }
  LlamaConfig c;
  int64_t layer;
  // torch::nn::Linear or layers::FactorizedLinear
  torch::nn::AnyModule q_proj, k_proj, v_proj, o_proj;
  layers::FeatureMap feature_map{nullptr};
  layers::TransferProbe probe;
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  MlpImpl(const LlamaConfig& c, int64_t layer) {
    auto lin = [&](const char* name, int64_t in, int64_t out) {
      torch::nn::AnyModule m = layers::linear_slot(
          c.factorized, msg("model.layers.", layer, ".mlp.", name), in, out, c.mlp_bias);
      register_module(name, m.ptr());
      return m;
    };
    gate_proj = lin("gate_proj", c.width, c.inner);
    up_proj = lin("up_proj", c.width, c.inner);
    down_proj = lin("down_proj", c.inner, c.width);
  }
  at::Tensor forward(const at::Tensor& x) {
    return down_proj.forward(at::silu(gate_proj.forward(x)) * up_proj.forward(x));
  }
  torch::nn::AnyModule gate_proj, up_proj, down_proj;  // Linear or FactorizedLinear
};
TORCH_MODULE(Mlp);

struct LayerImpl : torch::nn::Module {
  LayerImpl(const LlamaConfig& c, int64_t layer) {
    self_attn = register_module("self_attn", Attention(c, layer));
    mlp = register_module("mlp", Mlp(c, layer));
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
  explicit BodyImpl(const LlamaConfig& c) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab, c.width));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) layers->push_back(Layer(c, i));
    norm = register_module("norm", RMSNorm(c.width, c.eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Body);

class Llama : public Model {
 public:
  explicit Llama(const nlohmann::json& config) : Model("llama", config) {
    c_.vocab = cfg_int(config, "vocab_size", 32000);
    c_.width = cfg_int(config, "hidden_size", 4096);
    c_.inner = cfg_int(config, "intermediate_size", 11008);
    c_.layers = cfg_int(config, "num_hidden_layers", 32);
    c_.heads = cfg_int(config, "num_attention_heads", 32);
    c_.kv_heads = cfg_int(config, "num_key_value_heads", c_.heads);
    RECAST_CHECK(c_.heads > 0 && c_.kv_heads > 0 && c_.heads % c_.kv_heads == 0,
                 "config: num_attention_heads ", c_.heads,
                 " is not a multiple of num_key_value_heads ", c_.kv_heads);
    c_.head_dim = cfg_int(config, "head_dim", c_.width / c_.heads);
    c_.positions = cfg_int(config, "max_position_embeddings", 2048);
    c_.eps = cfg_double(config, "rms_norm_eps", 1e-6);
    c_.rope_theta = read_rope_theta(config);
    c_.tied = cfg_bool(config, "tie_word_embeddings", false);
    c_.attention_bias = cfg_bool(config, "attention_bias", false);
    c_.mlp_bias = cfg_bool(config, "mlp_bias", false);
    std::string act = cfg_string(config, "hidden_act", "silu");
    if (act != "silu")
      throw Error(msg("config key 'hidden_act': unsupported ", quote(act), " (supported: silu)"));
    RECAST_CHECK(c_.head_dim % 2 == 0, "config: head_dim ", c_.head_dim,
                 " must be even for rotary embeddings");
    c_.t2r = layers::T2RConfig::from(config);
    if (c_.t2r) {
      for (int64_t l : c_.t2r->layers) {
        RECAST_CHECK(l >= 0 && l < c_.layers, "config 'recast_t2r': layer ", l,
                     " out of range for num_hidden_layers ", c_.layers);
      }
    }
    c_.factorized = layers::FactorizedConfig::from(config);
    model_ = register_module("model", Body(c_));
    lm_head_.init(*this, c_.width, c_.vocab, c_.tied);
    if (c_.factorized) layers::check_factorized(*c_.factorized, *this, "llama");
  }

  // The seven projections of every layer (not the lm_head).
  std::vector<DenseLayer> factorizable_layers() override {
    std::vector<DenseLayer> out;
    for (const auto& name : layers::torch_dense_layers(*this)) {
      if (name.rfind("model.layers.", 0) == 0) out.push_back({name, false});
    }
    return out;
  }

  // Per query head h: W_Q^h = rows h*d..(h+1)*d of q_proj (transposed), W_K^h
  // those of its key / value group's k_proj (grouped-query attention: the
  // group's K is shared by its query heads), W_O^h the columns h*d..(h+1)*d of
  // o_proj. Rotary embeddings make q.k depend on the positions too; the
  // penalty is on the weight products, as the paper's.
  std::vector<layers::FactorPair> attention_factors() override {
    std::vector<layers::FactorPair> out;
    const int64_t d = c_.head_dim;
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      auto& attn = model_->layers[i]->as<Layer>()->self_attn;
      auto* q = attn->q_proj.ptr()->as<torch::nn::Linear>();
      auto* k = attn->k_proj.ptr()->as<torch::nn::Linear>();
      auto* v = attn->v_proj.ptr()->as<torch::nn::Linear>();
      auto* o = attn->o_proj.ptr()->as<torch::nn::Linear>();
      if (!q || !k || !v || !o) continue;  // factorized: its own pairs
      const std::string name = msg("model.layers.", i, ".self_attn");
      auto heads_of = [&](const at::Tensor& w, int64_t n) {  // [n*d, width] -> [heads, width, d]
        return w.reshape({n, d, c_.width}).transpose(1, 2).repeat_interleave(c_.heads / n, 0);
      };
      const at::Tensor wo = o->weight.reshape({c_.width, c_.heads, d}).permute({1, 0, 2});
      out.push_back({name + " (QK^T)", heads_of(q->weight, c_.heads), heads_of(k->weight, c_.kv_heads),
                     {name + ".q_proj.weight", name + ".k_proj.weight"}});
      out.push_back({name + " (VO)", heads_of(v->weight, c_.kv_heads), wo,
                     {name + ".v_proj.weight", name + ".o_proj.weight"}});
    }
    return out;
  }

  Task task() const override { return Task::CausalLM; }

  // transformers' LlamaPreTrainedModel init: N(0, initializer_range) for every
  // Linear and Embedding weight, RMSNorm weights 1.
  void init_weights() override {
    torch::NoGradGuard no_grad;
    const double std = cfg_double(config(), "initializer_range", 0.02);
    for (auto& item : named_parameters(true)) {
      if (item.key().find(".feature_map.") != std::string::npos) continue;  // below
      if (item.key().find("norm") != std::string::npos) {
        item.value().fill_(1.0);
      } else if (ends_with(item.key(), ".bias")) {
        item.value().zero_();
      } else {
        item.value().normal_(0.0, std);
      }
    }
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      auto& attn = model_->layers[i]->as<Layer>()->self_attn;
      if (attn->feature_map) attn->feature_map->reset_parameters();
    }
    // Factorized projections: the spectral factors of N(0, std).
    layers::init_factorized_from_dense(
        *this, [&](const std::string&, at::IntArrayRef shape) { return torch::randn(shape) * std; });
  }
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

  void set_attention_transfer(bool on) override {
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      model_->layers[i]->as<Layer>()->self_attn->probe.on = on;
    }
  }
  std::vector<TransferError> attention_transfer_errors() override {
    std::vector<TransferError> out;
    for (size_t i = 0; i < model_->layers->size(); ++i) {
      const auto& attn = model_->layers[i]->as<Layer>()->self_attn;
      if (attn->feature_map && attn->probe.mse.defined()) {
        out.push_back({msg("model.layers.", i, ".self_attn"), attn->probe.mse, attn->probe.relative});
      }
    }
    return out;
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {at::randint(c_.vocab, {batch_size, 16}, gen, at::kLong), {}, {}, {}};
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
  Body model_{nullptr};
  LmHead lm_head_;
};

}  // namespace

void register_llama(Registry<ModelFactory>& r) {
  r.add("llama", "Llama-style decoder (transformers LlamaForCausalLM: RMSNorm, RoPE, SwiGLU, GQA)",
        {ConfigStyle::Transformers,
         [](const nlohmann::json& c) { return std::make_shared<Llama>(c); }});
}

}  // namespace recast::models
