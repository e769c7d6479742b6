// GPT-2 as transformers' GPT2LMHeadModel names it: transformer.{wte, wpe, h.N,
// ln_f}; Conv1D weights stored [in, out] and applied as x @ W + b, exactly as
// transformers does, so the checkpoint is used (and saved) as is.

#include "recast/core/error.h"
#include "recast/models/decoder.h"
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

struct Gpt2Config {
  int64_t vocab, positions, width, layers, heads, inner;
  double eps;
  std::string activation;
  bool tied, scale_by_layer;
};

// A projection slot (Conv1D's [in, out] layout unless a recast builds it).
torch::nn::AnyModule projection(Slots& slots, torch::nn::Module& parent, const std::string& prefix,
                                const char* local, int64_t in, int64_t out) {
  Slot s;
  s.name = prefix + local, s.in = in, s.out = out, s.bias = true, s.transposed = true;
  return slots.layer(parent, local, s, [&] { return torch::nn::AnyModule(Conv1D(in, out)); });
}

at::Tensor activate(const std::string& name, const at::Tensor& x) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "gelu") return at::gelu(x);
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  throw Error(msg("config key 'activation_function': unsupported ", quote(name),
                  " (supported: gelu_new, gelu_pytorch_tanh, gelu, relu, silu)"));
}

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const Gpt2Config& c, int64_t layer, Slots& slots) : heads(c.heads) {
    const std::string name = msg("transformer.h.", layer, ".attn");
    Slot s;
    s.name = name;
    s.attention.layer = layer, s.attention.heads = s.attention.kv_heads = c.heads;
    s.attention.head_dim = c.width / c.heads, s.attention.causal = true;
    s.attention.scale = 1.0 / std::sqrt(static_cast<double>(c.width / c.heads));
    if (c.scale_by_layer) s.attention.scale /= static_cast<double>(layer + 1);
    s.query = {name + ".c_attn", 0}, s.key = {name + ".c_attn", c.width};
    s.value = {name + ".c_attn", 2 * c.width}, s.output = name + ".c_proj";
    s.mixable = true, s.in = c.width, s.out = c.width, s.bias = true;
    // A token mixer that takes the attention's input needs no q, k, v.
    if (!slots.mixes_input(s)) c_attn = projection(slots, *this, name + ".", "c_attn", c.width, 3 * c.width);
    c_proj = projection(slots, *this, name + ".", "c_proj", c.width, c.width);
    core = slots.attention(*this, s);
  }
  at::Tensor forward(const at::Tensor& x, const ops::AttentionMask& mask, KVCache* cache) {
    const int64_t b = x.size(0), t = x.size(1), w = x.size(2), d = w / heads;
    at::Tensor y;
    if (core->mixes_input()) {
      y = core->mix(x, mask, cache);
    } else {
      auto qkv = c_attn.forward(x).split(w, -1);
      auto split_heads = [&](const at::Tensor& z) {
        return z.view({b, t, heads, d}).transpose(1, 2);
      };
      y = core->forward(split_heads(qkv[0]), split_heads(qkv[1]), split_heads(qkv[2]), mask, cache);
    }
    return c_proj.forward(y.transpose(1, 2).reshape({b, t, w}));
  }
  int64_t heads;
  torch::nn::AnyModule c_attn, c_proj;  // Conv1D, or a recast's layer
  std::shared_ptr<layers::AttentionCoreImpl> core;
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  MlpImpl(const Gpt2Config& c, int64_t layer, Slots& slots) : activation(c.activation) {
    const std::string name = msg("transformer.h.", layer, ".mlp.");
    c_fc = projection(slots, *this, name, "c_fc", c.width, c.inner);
    c_proj = projection(slots, *this, name, "c_proj", c.inner, c.width);
  }
  at::Tensor forward(const at::Tensor& x) {
    return c_proj.forward(activate(activation, c_fc.forward(x)));
  }
  std::string activation;
  torch::nn::AnyModule c_fc, c_proj;  // Conv1D, or a recast's layer
};
TORCH_MODULE(Mlp);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const Gpt2Config& c, int64_t layer, Slots& slots) {
    auto ln = torch::nn::LayerNormOptions({c.width}).eps(c.eps);
    ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln));
    attn = register_module("attn", Attention(c, layer, slots));
    ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln));
    mlp = register_module("mlp", Mlp(c, layer, slots));
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
  TransformerImpl(const Gpt2Config& c, Slots& slots) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab, c.width));
    wpe = register_module("wpe", torch::nn::Embedding(c.positions, c.width));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.layers; ++i) h->push_back(Block(c, i, slots));
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
  Gpt2(const std::string& arch, const nlohmann::json& config, const ConfigSpec& spec)
      : Model(arch, config) {
    const ConfigView v(config, spec);
    c_.vocab = v.i("vocab_size");
    c_.positions = v.i("n_positions");
    c_.width = v.i("n_embd");
    c_.layers = v.i("n_layer");
    c_.heads = v.i("n_head");
    c_.inner = v.has("n_inner") ? v.i("n_inner") : 4 * c_.width;
    c_.eps = v.d("layer_norm_epsilon");
    c_.activation = v.s("activation_function");
    c_.tied = v.b("tie_word_embeddings");
    c_.scale_by_layer = v.b("scale_attn_by_inverse_layer_idx");
    init_std_ = v.d("initializer_range");
    transformer_ = register_module("transformer", Transformer(c_, slots()));
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
    const double std = init_std_;
    // GPT-2's scaled init of the projections that feed the residual stream.
    const double residual = std / std::sqrt(2.0 * static_cast<double>(c_.layers));
    for (auto& item : named_parameters(true)) {
      const std::string& name = item.key();
      at::Tensor p = item.value();
      if (slots().recast_owned(name)) continue;  // below
      if (ends_with(name, ".bias")) {
        p.zero_();
      } else if (name.find(".ln_") != std::string::npos || name.find("ln_f") != std::string::npos) {
        p.fill_(1.0);
      } else if (ends_with(name, "c_proj.weight")) {
        p.normal_(0.0, residual);
      } else {
        p.normal_(0.0, std);
      }
    }
    // Layers a recast built start from what the dense layer would have drawn.
    slots().init_recast_layers([&](const Slot& s) {
      const double sd = ends_with(s.name, "c_proj") ? residual : std;
      return DenseInit{torch::randn({s.out, s.in}) * sd, torch::zeros({s.out})};
    });
  }

  int64_t context_length() const override { return c_.positions; }

  bool ignorable(const std::string& name) const override {
    // old transformers saved their causal-mask buffers
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias");
  }

  at::Tensor forward(const Batch& batch, Recorder* rec, KVCache* cache) override {
    const auto [ids, mask, pos] = decoder_inputs(batch, c_.vocab, c_.positions, cache);
    at::Tensor x = transformer_->wte(ids) + transformer_->wpe(pos);
    for (size_t i = 0; i < transformer_->h->size(); ++i) {
      x = transformer_->h[i]->as<Block>()->forward(x, mask, cache);
      if (rec) rec->record(msg("transformer.h.", i), x);
    }
    if (cache) cache->tokens += ids.size(1);
    x = transformer_->ln_f(x);
    if (rec) rec->record("transformer.ln_f", x);
    if (labels_ > 0) return score_(last_token_states(x, batch.attention_mask));
    return lm_head_(last_positions(x, batch.logits_to_keep), transformer_->wte->weight);
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {
        at::randint(c_.vocab, {batch_size, std::min<int64_t>(16, c_.positions)}, gen, at::kLong),
        {},
        {},
        {},
        {}};
  }

 private:
  Gpt2Config c_;
  double init_std_ = 0.02;
  Transformer transformer_{nullptr};
  LmHead lm_head_;
  int64_t labels_ = 0;
  torch::nn::Linear score_{nullptr};
};


ConfigSpec gpt2_spec() {
  ConfigSpec spec;
  spec.style = ConfigStyle::Transformers;
  spec.keys = {
      int_key("vocab_size", 50257, 1, 1 << 24),
      int_key("n_positions", 1024, 1, 1 << 24),
      int_key("n_embd", 768, 1, 1 << 17),
      int_key("n_layer", 12, 1, 4096),
      int_key("n_head", 12, 1, 4096),
      int_key("n_inner", nullptr, 1, 1 << 20),
      double_key("layer_norm_epsilon", 1e-5, 0, 1),
      string_key("activation_function", "gelu_new",
                 {"gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu", "swish"}),
      bool_key("tie_word_embeddings", true),
      bool_key("scale_attn_by_inverse_layer_idx", false),
      bool_key("scale_attn_weights", true),
      double_key("initializer_range", 0.02, 0, 10),
      // Accepted, not used: recast trains without dropout; the summary head
      // and old context key are GPT2DoubleHeads' / GPT-2 1.x's.
      ignored_key("n_ctx"), ignored_key("resid_pdrop"), ignored_key("embd_pdrop"),
      ignored_key("attn_pdrop"), ignored_key("summary_type"), ignored_key("summary_use_proj"),
      ignored_key("summary_activation"), ignored_key("summary_proj_to_labels"),
      ignored_key("summary_first_dropout"), ignored_key("reorder_and_upcast_attn"),
      ignored_key("gradient_checkpointing"), ignored_key("n_special")};
  spec.checks.push_back([](const ConfigView& v) {
    RECAST_CHECK(v.i("n_embd") % v.i("n_head") == 0, "config key 'n_head': n_embd ", v.i("n_embd"),
                 " is not a multiple of n_head ", v.i("n_head"));
    if (!v.b("scale_attn_weights")) throw Error("config key 'scale_attn_weights': false is not supported");
  });
  spec.parameters = [](const ConfigView& v) {
    const double w = static_cast<double>(v.i("n_embd"));
    const double inner = v.has("n_inner") ? static_cast<double>(v.i("n_inner")) : 4 * w;
    return (static_cast<double>(v.i("vocab_size")) + static_cast<double>(v.i("n_positions"))) * w +
           static_cast<double>(v.i("n_layer")) * (4 * w * w + 2 * w * inner);
  };
  return spec;
}

}  // namespace

RECAST_REGISTER_MODEL(gpt2) {
  ModelFactory f;
  f.style = ConfigStyle::Transformers;
  f.spec = gpt2_spec();
  f.make = [spec = f.spec](const nlohmann::json& c) { return std::make_shared<Gpt2>("gpt2", c, spec); };
  f.tasks = {Task::CausalLM, Task::SequenceClassification};
  f.heads = {"lm_head.", "score."};
  f.fit = [](const DataFacts& d, bool head_only) {
    std::vector<std::pair<std::string, nlohmann::json>> out;
    if (d.task == Task::SequenceClassification) {
      // transformers' GPT2ForSequenceClassification layout: the pooled "score" head.
      nlohmann::json id2label = nlohmann::json::object();
      for (size_t i = 0; i < d.classes.size(); ++i) id2label[std::to_string(i)] = d.classes[i];
      out.emplace_back("architectures", nlohmann::json::array({"GPT2ForSequenceClassification"}));
      out.emplace_back("id2label", id2label);
      if (d.eos >= 0) out.emplace_back("pad_token_id", d.eos);
    }
    if (head_only) return out;
    out.emplace_back("vocab_size", d.vocab);
    if (d.eos >= 0) out.emplace_back("bos_token_id", d.eos), out.emplace_back("eos_token_id", d.eos);
    out.emplace_back("n_positions", std::max<int64_t>(d.seq_len, 128));
    return out;
  };
  f.tiny = {{"n_layer", 2}, {"n_embd", 32}, {"n_head", 4}, {"n_positions", 64}, {"vocab_size", 50}};
  r.add("gpt2", "GPT-2 (transformers GPT2LMHeadModel: Conv1D weights, tied lm_head, gelu_new)", f);
}

}  // namespace recast::models
