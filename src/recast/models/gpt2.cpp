// GPT-2 as transformers' GPT2LMHeadModel names it: transformer.{wte, wpe, h.N,
// ln_f}; Conv1D weights stored [in, out] and applied as x @ W + b, exactly as
// transformers does, so the checkpoint is used (and saved) as is.

#include "recast/core/error.h"
#include "recast/models/decoder.h"
#include "recast/layers/linear_attention.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {
namespace {

// transformers' Conv1D: weight [in, out], y = x @ W + b.
struct Conv1DImpl : torch::nn::Module {
  Conv1DImpl(int64_t in, int64_t out) {
    weight = register_parameter("weight", torch::randn({in, out}) * 0.02);
    bias = register_parameter("bias", torch::zeros({out}));
  }
  at::Tensor forward(const at::Tensor& x) {
    auto shape = x.sizes().vec();
    shape.back() = weight.size(1);
    return at::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(shape);
  }
  at::Tensor weight, bias;
};
TORCH_MODULE(Conv1D);

// A projection: Conv1D, or a FactorizedLinear ([out, in] factors, the usual
// Linear layout) where the config's recast_factorized names it.
torch::nn::AnyModule projection(const std::optional<layers::FactorizedConfig>& factorized,
                                const std::string& name, int64_t in, int64_t out) {
  if (factorized) {
    if (const auto r = factorized->rank(name)) {
      layers::FactorizedLinearOptions o;
      o.in = in, o.out = out, o.rank = *r;
      return torch::nn::AnyModule(layers::FactorizedLinear(o));
    }
  }
  return torch::nn::AnyModule(Conv1D(in, out));
}

struct Gpt2Config {
  int64_t vocab, positions, width, layers, heads, inner;
  double eps;
  std::string activation;
  bool tied, scale_by_layer;
  std::optional<layers::T2RConfig> t2r;  // layers recast to linear attention (T2R)
  std::optional<layers::FactorizedConfig> factorized;  // low-rank projections
};

at::Tensor activate(const std::string& name, const at::Tensor& x) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "gelu") return at::gelu(x);
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  throw Error(msg("config key 'activation_function': unsupported ", quote(name),
                  " (supported: gelu_new, gelu_pytorch_tanh, gelu, relu, silu)"));
}

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const Gpt2Config& c, int64_t layer_index) : heads(c.heads), layer(layer_index) {
    const std::string name = msg("transformer.h.", layer_index, ".attn.");
    c_attn = projection(c.factorized, name + "c_attn", c.width, 3 * c.width);
    c_proj = projection(c.factorized, name + "c_proj", c.width, c.width);
    register_module("c_attn", c_attn.ptr());
    register_module("c_proj", c_proj.ptr());
    scale = 1.0 / std::sqrt(static_cast<double>(c.width / c.heads));
    if (c.scale_by_layer) scale /= static_cast<double>(layer_index + 1);
    if (c.t2r && c.t2r->linear(layer_index)) {
      t2r = *c.t2r;
      feature_map = register_module(
          "feature_map",
          layers::FeatureMap(t2r->feature_map, c.heads, c.width / c.heads, t2r->features));
    }
  }
  at::Tensor forward(const at::Tensor& x, ops::AttentionMask mask, KVCache* cache) {
    const int64_t b = x.size(0), t = x.size(1), w = x.size(2), d = w / heads;
    auto qkv = c_attn.forward(x).split(w, -1);
    auto split_heads = [&](const at::Tensor& y) {
      return y.view({b, t, heads, d}).transpose(1, 2);
    };
    at::Tensor q = split_heads(qkv[0]), k = split_heads(qkv[1]), v = split_heads(qkv[2]);
    at::Tensor y;
    if (t2r) {
      at::Tensor padding;
      if (mask.key_padding.defined()) padding = mask.key_padding.narrow(1, mask.query_offset, t);
      y = layers::t2r_attention(feature_map, q, k, v, padding, *t2r,
                                cache ? &cache->linear_state(static_cast<size_t>(layer)) : nullptr);
      if (probe.on) {
        RECAST_CHECK(cache == nullptr, "attention transfer runs without a KV cache");
        y = probe.compare(y, ops::attention(q, k, v, mask, scale));
      }
    } else {
      if (cache != nullptr) std::tie(k, v) = append_kv(*cache, layer, k, v);
      y = ops::attention(q, k, v, mask, scale);
    }
    return c_proj.forward(y.transpose(1, 2).reshape({b, t, w}));
  }
  int64_t heads, layer;
  double scale;
  torch::nn::AnyModule c_attn, c_proj;  // Conv1D or layers::FactorizedLinear
  std::optional<layers::T2RConfig> t2r;
  layers::FeatureMap feature_map{nullptr};
  layers::TransferProbe probe;
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  MlpImpl(const Gpt2Config& c, int64_t layer) : activation(c.activation) {
    const std::string name = msg("transformer.h.", layer, ".mlp.");
    c_fc = projection(c.factorized, name + "c_fc", c.width, c.inner);
    c_proj = projection(c.factorized, name + "c_proj", c.inner, c.width);
    register_module("c_fc", c_fc.ptr());
    register_module("c_proj", c_proj.ptr());
  }
  at::Tensor forward(const at::Tensor& x) {
    return c_proj.forward(activate(activation, c_fc.forward(x)));
  }
  std::string activation;
  torch::nn::AnyModule c_fc, c_proj;  // Conv1D or layers::FactorizedLinear
};
TORCH_MODULE(Mlp);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const Gpt2Config& c, int64_t layer) {
    auto ln = torch::nn::LayerNormOptions({c.width}).eps(c.eps);
    ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln));
    attn = register_module("attn", Attention(c, layer));
    ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln));
    mlp = register_module("mlp", Mlp(c, layer));
  }
  at::Tensor forward(at::Tensor x, const ops::AttentionMask& mask, KVCache* cache) {
    x = x + attn(ln_1(x), mask, cache);
    return x + mlp(ln_2(x));
  }
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const Gpt2Config& c) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab, c.width));
    wpe = register_module("wpe", torch::nn::Embedding(c.positions, c.width));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) h->push_back(Block(c, i));
    ln_f = register_module("ln_f",
                           torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.width}).eps(c.eps)));
  }
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Transformer);

class Gpt2 : public Model {
 public:
  Gpt2(const std::string& arch, const nlohmann::json& config) : Model(arch, config) {
    c_.vocab = cfg_int(config, "vocab_size", 50257);
    c_.positions = cfg_int(config, "n_positions", 1024);
    c_.width = cfg_int(config, "n_embd", 768);
    c_.layers = cfg_int(config, "n_layer", 12);
    c_.heads = cfg_int(config, "n_head", 12);
    c_.inner = cfg_int(config, "n_inner", 4 * c_.width);
    c_.eps = cfg_double(config, "layer_norm_epsilon", 1e-5);
    c_.activation = cfg_string(config, "activation_function", "gelu_new");
    c_.tied = cfg_bool(config, "tie_word_embeddings", true);
    c_.scale_by_layer = cfg_bool(config, "scale_attn_by_inverse_layer_idx", false);
    if (!cfg_bool(config, "scale_attn_weights", true)) {
      throw Error("config key 'scale_attn_weights': false is not supported");
    }
    RECAST_CHECK(c_.width % c_.heads == 0, "config: n_embd ", c_.width,
                 " is not a multiple of n_head ", c_.heads);
    c_.t2r = layers::T2RConfig::from(config);
    c_.factorized = layers::FactorizedConfig::from(config);
    if (c_.t2r) {
      for (int64_t l : c_.t2r->layers) {
        RECAST_CHECK(l >= 0 && l < c_.layers, "config 'recast_t2r': layer ", l,
                     " out of range for n_layer ", c_.layers);
      }
    }
    activate(c_.activation, at::zeros({1}));  // rejects unknown activations now
    transformer_ = register_module("transformer", Transformer(c_));
    if (c_.factorized) layers::check_factorized(*c_.factorized, *this, arch);
    labels_ = sequence_classification_labels(config, "GPT2ForSequenceClassification");
    if (labels_ > 0) {
      // transformers' GPT2ForSequenceClassification: a bias-free "score" head on
      // the hidden state of each sequence's last real token.
      score_ = register_module("score",
                               torch::nn::Linear(torch::nn::LinearOptions(c_.width, labels_).bias(false)));
    } else {
      lm_head_.init(*this, c_.width, c_.vocab, c_.tied);
    }
  }

  Task task() const override {
    return labels_ > 0 ? Task::SequenceClassification : Task::CausalLM;
  }
  std::vector<std::string> tied_names() const override {
    return labels_ > 0 ? std::vector<std::string>{} : lm_head_.tied_names();
  }

  void init_weights() override {
    torch::NoGradGuard no_grad;
    const double std = cfg_double(config(), "initializer_range", 0.02);
    for (auto& item : named_parameters(true)) {
      const std::string& name = item.key();
      at::Tensor p = item.value();
      if (name.find(".feature_map.") != std::string::npos) continue;  // below
      if (ends_with(name, ".bias")) {
        p.zero_();
      } else if (name.find(".ln_") != std::string::npos || name.find("ln_f") != std::string::npos) {
        p.fill_(1.0);
      } else if (ends_with(name, "c_proj.weight")) {
        // GPT-2's scaled init of the projections that feed the residual stream.
        p.normal_(0.0, std / std::sqrt(2.0 * static_cast<double>(c_.layers)));
      } else {
        p.normal_(0.0, std);
      }
    }
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      auto& attn = transformer_->h[i]->as<Block>()->attn;
      if (attn->feature_map) attn->feature_map->reset_parameters();
    }
    // Factorized projections: the spectral factors of the dense init.
    layers::init_factorized_from_dense(*this, [&](const std::string& name, at::IntArrayRef shape) {
      const double s = ends_with(name, "c_proj") ? std / std::sqrt(2.0 * static_cast<double>(c_.layers))
                                                 : std;
      return torch::randn(shape) * s;
    });
  }

  std::vector<DenseLayer> factorizable_layers() override {
    std::vector<DenseLayer> out;
    for (const auto& item : named_modules("", false)) {
      if (item.value()->as<Conv1D>() != nullptr) out.push_back({item.key(), /*transposed=*/true});
    }
    return out;
  }

  // Per head h: W_Q^h, W_K^h, W_V^h are column blocks of c_attn's [w, 3w]
  // weight (x @ W), W_O^h the rows h*d..(h+1)*d of c_proj's [w, w] weight.
  std::vector<layers::FactorPair> attention_factors() override {
    std::vector<layers::FactorPair> out;
    const int64_t w = c_.width, heads = c_.heads, d = w / heads;
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      auto& attn = transformer_->h[i]->as<Block>()->attn;
      auto* qkv = attn->c_attn.ptr()->as<Conv1D>();
      auto* proj = attn->c_proj.ptr()->as<Conv1D>();
      if (qkv == nullptr || proj == nullptr) continue;  // factorized: its own pairs
      const std::string name = msg("transformer.h.", i, ".attn");
      auto head_columns = [&](int64_t part) {
        return qkv->weight.narrow(1, part * w, w).reshape({w, heads, d}).permute({1, 0, 2});
      };
      const at::Tensor o = proj->weight.reshape({heads, d, w}).transpose(1, 2);
      out.push_back({name + " (QK^T)", head_columns(0), head_columns(1), {name + ".c_attn.weight"}});
      out.push_back({name + " (VO)", head_columns(2), o,
                     {name + ".c_attn.weight", name + ".c_proj.weight"}});
    }
    return out;
  }
  bool ignorable(const std::string& name) const override {
    // old transformers saved their causal-mask buffers
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
  }

  at::Tensor forward(const Batch& batch, Recorder* rec, KVCache* cache) override {
    const int64_t offset = cache ? cache->length() : 0;
    const at::Tensor ids = check_input_ids(batch, c_.vocab, c_.positions, offset);
    ops::AttentionMask mask = decoder_mask(batch, ids, offset);
    const at::Tensor pos = decoder_positions(batch, ids, offset, c_.positions);
    at::Tensor x = transformer_->wte(ids) + transformer_->wpe(pos);
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      x = transformer_->h[i]->as<Block>()->forward(x, mask, cache);
      if (rec) rec->record(msg("transformer.h.", i), x);
    }
    if (cache) cache->tokens += ids.size(1);
    x = transformer_->ln_f(x);
    if (rec) rec->record("transformer.ln_f", x);
    if (labels_ > 0) return score_(last_token_states(x, batch.attention_mask));
    return lm_head_(x, transformer_->wte->weight);
  }

  void set_attention_transfer(bool on) override {
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      transformer_->h[i]->as<Block>()->attn->probe.on = on;
    }
  }
  std::vector<TransferError> attention_transfer_errors() override {
    std::vector<TransferError> out;
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      const auto& attn = transformer_->h[i]->as<Block>()->attn;
      if (attn->t2r && attn->probe.mse.defined()) {
        out.push_back({msg("transformer.h.", i, ".attn"), attn->probe.mse, attn->probe.relative});
      }
    }
    return out;
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {
        at::randint(c_.vocab, {batch_size, std::min<int64_t>(16, c_.positions)}, gen, at::kLong),
        {},
        {},
        {}};
  }

 private:
  Gpt2Config c_;
  Transformer transformer_{nullptr};
  LmHead lm_head_;
  int64_t labels_ = 0;
  torch::nn::Linear score_{nullptr};
};

}  // namespace

void register_gpt2(Registry<ModelFactory>& r) {
  r.add("gpt2", "GPT-2 (transformers GPT2LMHeadModel: Conv1D weights, tied lm_head, gelu_new)",
        {ConfigStyle::Transformers,
         [](const nlohmann::json& c) { return std::make_shared<Gpt2>("gpt2", c); }});
}

}  // namespace recast::models
