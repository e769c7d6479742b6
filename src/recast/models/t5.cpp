// T5 encoder-decoders as transformers' T5ForConditionalGeneration names them:
// shared (the token embedding of both stacks), encoder.block.N.layer.{0:
// SelfAttention + layer_norm, 1: DenseReluDense + layer_norm},
// decoder.block.N.layer.{0: SelfAttention, 1: EncDecAttention, 2:
// DenseReluDense}, {encoder, decoder}.final_layer_norm, lm_head (untied).
// T5LayerNorm (RMS, no bias, statistics in fp32), attention without the
// 1/sqrt(d) scale, relative position buckets (bidirectional in the encoder,
// causal in the decoder) computed by each stack's first layer and shared by
// all its layers, feed-forward "relu" (T5 v1.0) or gated ("gated-gelu":
// gelu_new, v1.1 / flan-t5 / mT5; "gated-silu"), and the decoder output
// rescaled by d_model^-0.5 before a tied head (transformers 5.x saves this
// as scale_decoder_outputs; 4.x configs imply it by tie_word_embeddings; mT5
// saved by 5.x is tied and unscaled).
// Dropout is not applied (recast trains without it, as T5 v1.1 pretrains).

#include "recast/core/error.h"
#include "recast/models/decoder.h"
#include "recast/models/seq2seq.h"
#include "recast/models/t5.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {

at::Tensor shift_right(const at::Tensor& labels, int64_t start, int64_t pad) {
  RECAST_CHECK(labels.dim() == 2 && labels.size(1) > 0, "labels: expected [B, T] with T > 0, found ",
               labels.sizes());
  at::Tensor out = at::empty_like(labels);
  out.select(1, 0).fill_(start);
  out.narrow(1, 1, labels.size(1) - 1).copy_(labels.narrow(1, 0, labels.size(1) - 1));
  return out.masked_fill(out.eq(-100), pad);
}

at::Tensor Seq2SeqModel::forward(const Batch& batch, Recorder* recorder, KVCache* cache) {
  RECAST_CHECK(batch.decoder_input_ids.defined(),
               "decoder_input_ids: missing (an encoder-decoder model takes int64 [B, T_dec], or "
               "labels to shift right)");
  const at::Tensor states = encode(batch, recorder);
  at::Tensor mask;
  if (batch.attention_mask.defined()) mask = batch.attention_mask;
  return decode(batch.decoder_input_ids, states, mask, recorder, cache);
}

at::Tensor t5_relative_position_bucket(const at::Tensor& relative, bool bidirectional,
                                       int64_t num_buckets, int64_t max_distance) {
  at::Tensor buckets = at::zeros_like(relative);
  at::Tensor rel = relative;
  int64_t n = num_buckets;
  if (bidirectional) {
    n /= 2;
    buckets = buckets + rel.gt(0).to(at::kLong) * n;
    rel = rel.abs();
  } else {
    rel = -at::clamp_max(rel, 0);
  }
  // Half the buckets are exact distances, the rest grow logarithmically up to
  // max_distance, computed in float32 and truncated as transformers does.
  const int64_t max_exact = n / 2;
  at::Tensor large =
      (at::log(rel.to(at::kFloat) / static_cast<double>(max_exact)) /
       std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
       static_cast<double>(n - max_exact))
          .to(at::kLong) +
      max_exact;
  large = at::clamp_max(large, n - 1);
  return buckets + at::where(rel.lt(max_exact), rel, large);
}

namespace {

struct T5Config {
  int64_t vocab, width, kv_dim, inner, enc_layers, dec_layers, heads, buckets, max_distance;
  double eps, factor;
  std::string act;  // relu | gelu_new | gelu | silu
  bool gated, tied, scale_output;
  int64_t pad, eos, start;
};

// A projection slot (bias-free Linear unless a recast builds it).
torch::nn::AnyModule projection(Slots& slots, torch::nn::Module& parent, const std::string& prefix,
                                const char* local, int64_t in, int64_t out) {
  Slot s;
  s.name = prefix + local, s.in = in, s.out = out, s.bias = false;
  return slots.layer(parent, local, s, [&] {
    return torch::nn::AnyModule(torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)));
  });
}

at::Tensor activate(const std::string& name, const at::Tensor& x) {
  if (name == "relu") return at::relu(x);
  if (name == "gelu_new") return at::gelu(x, "tanh");
  if (name == "gelu") return at::gelu(x);
  return at::silu(x);  // "silu" (validated by the config table)
}

// T5LayerNorm: x / rms(x) with the statistics in fp32, scaled; no bias, no mean.
struct LayerNormImpl : torch::nn::Module {
  LayerNormImpl(int64_t width, double epsilon) : eps(epsilon) {
    weight = register_parameter("weight", torch::ones({width}));
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor variance = x.to(at::kFloat).pow(2).mean(-1, /*keepdim=*/true);
    at::Tensor h = x * at::rsqrt(variance + eps);
    if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) {
      h = h.to(weight.scalar_type());
    }
    return weight * h;
  }
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(LayerNorm);

// SelfAttention or EncDecAttention of one block.
struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const T5Config& config, const std::string& name, int64_t layer, bool decoder,
                bool cross, Slots& slots)
      : c(config), index(layer), is_decoder(decoder), is_cross(cross) {
    const int64_t inner = c.heads * c.kv_dim;
    Slot s;
    s.name = name;
    s.attention.layer = layer, s.attention.heads = c.heads, s.attention.kv_heads = c.heads;
    s.attention.head_dim = c.kv_dim, s.attention.causal = decoder;
    s.attention.scale = 1.0;  // T5 folds the scale into its initialisation
    s.query = {name + ".q", 0}, s.key = {name + ".k", 0};
    s.value = {name + ".v", 0}, s.output = name + ".o";
    s.mixable = true, s.in = c.width, s.out = inner, s.bias = false;
    // A token mixer that takes the attention's input needs no q, k, v
    // (cross-attention stays softmax).
    if (cross || !slots.mixes_input(s)) {
      q = projection(slots, *this, name + ".", "q", c.width, inner);
      k = projection(slots, *this, name + ".", "k", c.width, inner);
      v = projection(slots, *this, name + ".", "v", c.width, inner);
    }
    o = projection(slots, *this, name + ".", "o", inner, c.width);
    if (!cross && layer == 0) {
      relative_attention_bias = register_module(
          "relative_attention_bias", torch::nn::Embedding(c.buckets, c.heads));
    }
    if (!cross) core = slots.attention(*this, s);
  }

  // [1, H, Tq, Tk]: the relative position bias of queries at positions
  // offset .. offset + tq - 1 over keys 0 .. tk - 1 (this layer has the table).
  at::Tensor position_bias(int64_t tq, int64_t tk, int64_t offset, const at::Tensor& like) {
    auto opts = at::TensorOptions().dtype(at::kLong).device(like.device());
    const at::Tensor context = at::arange(offset, offset + tq, opts).unsqueeze(1);
    const at::Tensor memory = at::arange(tk, opts).unsqueeze(0);
    const at::Tensor buckets =
        t5_relative_position_bucket(memory - context, !is_decoder, c.buckets, c.max_distance);
    return relative_attention_bias->forward(buckets).permute({2, 0, 1}).unsqueeze(0);
  }

  at::Tensor heads(const at::Tensor& x, int64_t b) const {
    return x.view({b, -1, c.heads, c.kv_dim}).transpose(1, 2);
  }

  // x [B, T, D]; for cross-attention `memory` holds the encoder's states.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& memory, const ops::AttentionMask& mask,
                     KVCache* cache) {
    const int64_t b = x.size(0), t = x.size(1);
    at::Tensor y;
    if (core && core->mixes_input()) {
      y = core->mix(x, mask, cache);
    } else if (is_cross) {
      const at::Tensor qh = heads(q.forward(x), b);
      at::Tensor kh, vh;
      const auto i = static_cast<size_t>(index);
      if (cache != nullptr && cache->cross_keys.size() > i && cache->cross_keys[i].defined()) {
        kh = cache->cross_keys[i], vh = cache->cross_values[i];
      } else {
        kh = heads(k.forward(memory), b), vh = heads(v.forward(memory), b);
        if (cache != nullptr) {
          if (cache->cross_keys.size() <= i) cache->cross_keys.resize(i + 1);
          if (cache->cross_values.size() <= i) cache->cross_values.resize(i + 1);
          cache->cross_keys[i] = kh, cache->cross_values[i] = vh;
        }
      }
      y = ops::attention(qh, kh, vh, mask, 1.0);
    } else {
      y = core->forward(heads(q.forward(x), b), heads(k.forward(x), b), heads(v.forward(x), b), mask,
                        cache);
    }
    return o.forward(y.transpose(1, 2).reshape({b, t, c.heads * c.kv_dim}));
  }

  T5Config c;
  int64_t index;
  bool is_decoder, is_cross;
  torch::nn::AnyModule q, k, v, o;  // Linear, or a recast's layer
  torch::nn::Embedding relative_attention_bias{nullptr};
  std::shared_ptr<layers::AttentionCoreImpl> core;
};
TORCH_MODULE(Attention);

// DenseReluDense: wi -> act -> wo, or gated: act(wi_0) * wi_1 -> wo.
struct FeedForwardImpl : torch::nn::Module {
  FeedForwardImpl(const T5Config& config, const std::string& name, Slots& slots) : c(config) {
    if (c.gated) {
      wi_0 = projection(slots, *this, name + ".", "wi_0", c.width, c.inner);
      wi_1 = projection(slots, *this, name + ".", "wi_1", c.width, c.inner);
    } else {
      wi = projection(slots, *this, name + ".", "wi", c.width, c.inner);
    }
    wo = projection(slots, *this, name + ".", "wo", c.inner, c.width);
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor h = c.gated ? activate(c.act, wi_0.forward(x)) * wi_1.forward(x)
                                 : activate(c.act, wi.forward(x));
    return wo.forward(h);
  }
  T5Config c;
  torch::nn::AnyModule wi, wi_0, wi_1, wo;
};
TORCH_MODULE(FeedForward);

// One sub-layer: x + f(layer_norm(x)). T5 numbers them block.N.layer.{0,1,2}.
struct SubLayerImpl : torch::nn::Module {
  SubLayerImpl(const T5Config& c, const std::string& name, int64_t layer, bool decoder,
               const char* kind, Slots& slots) {
    const std::string child = name + "." + kind;
    if (std::string(kind) == "DenseReluDense") {
      ff = register_module(kind, FeedForward(c, child, slots));
    } else {
      attention = register_module(
          kind, Attention(c, child, layer, decoder, std::string(kind) == "EncDecAttention", slots));
    }
    layer_norm = register_module("layer_norm", LayerNorm(c.width, c.eps));
  }
  Attention attention{nullptr};
  FeedForward ff{nullptr};
  LayerNorm layer_norm{nullptr};
};
TORCH_MODULE(SubLayer);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const T5Config& c, const std::string& stack, int64_t index, Slots& slots) {
    const bool decoder = stack == "decoder";
    const std::string name = msg(stack, ".block.", index, ".layer.");
    layer = register_module("layer", torch::nn::ModuleList());
    std::vector<const char*> kinds = {"SelfAttention"};
    if (decoder) kinds.push_back("EncDecAttention");
    kinds.push_back("DenseReluDense");
    for (size_t i = 0; i < kinds.size(); ++i) {
      layer->push_back(SubLayer(c, msg(name, i), index, decoder, kinds[i], slots));
    }
  }
  SubLayerImpl& sub(size_t i) { return *layer[i]->as<SubLayer>(); }
  at::Tensor forward(at::Tensor x, const ops::AttentionMask& self_mask, const at::Tensor& memory,
                     const ops::AttentionMask& cross_mask, KVCache* cache) {
    SubLayerImpl& self = sub(0);
    x = x + self.attention->forward(self.layer_norm(x), at::Tensor(), self_mask, cache);
    if (layer->size() == 3) {
      SubLayerImpl& cross = sub(1);
      x = x + cross.attention->forward(cross.layer_norm(x), memory, cross_mask, cache);
    }
    SubLayerImpl& ff = sub(layer->size() - 1);
    return x + ff.ff(ff.layer_norm(x));
  }
  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(Block);

struct StackImpl : torch::nn::Module {
  StackImpl(const T5Config& c, const std::string& name, int64_t layers, Slots& slots) {
    block = register_module("block", torch::nn::ModuleList());
    for (int64_t i = 0; i < layers; ++i) block->push_back(Block(c, name, i, slots));
    final_layer_norm = register_module("final_layer_norm", LayerNorm(c.width, c.eps));
  }
  BlockImpl& at(size_t i) { return *block[i]->as<Block>(); }
  torch::nn::ModuleList block{nullptr};
  LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(Stack);

at::Tensor check_ids(const at::Tensor& ids, const char* name, int64_t vocab) {
  Batch b;
  b.input_ids = ids;
  try {
    return check_input_ids(b, vocab, std::numeric_limits<int64_t>::max(), 0);
  } catch (const Error& e) {
    std::string what = e.what();
    if (what.rfind("input_ids", 0) == 0) what = name + what.substr(9);
    throw Error(what);
  }
}

ops::AttentionMask padding_mask(const at::Tensor& mask, const at::Tensor& ids, const char* name) {
  ops::AttentionMask m;
  if (!mask.defined()) return m;
  RECAST_CHECK(mask.dim() == 2 && mask.size(0) == ids.size(0) && mask.size(1) == ids.size(1), name,
               ": expected [", ids.size(0), ", ", ids.size(1), "], found ", mask.sizes());
  m.key_padding = mask.to(ids.device()).ne(0);
  return m;
}

// Without scale_decoder_outputs: transformers 4.x scaled the decoder output
// exactly when the head was tied (T5 and mT5 alike); 5.x writes the key for T5
// and never scales mT5 (MT5Config forces a tied head and MT5's forward has no
// rescale), so an mT5 config saved by 5.x is unscaled.
bool implied_scale(const std::string& arch, const nlohmann::json& config, bool tied) {
  if (arch != "mt5") return tied;
  auto it = config.find("transformers_version");
  const bool v5 = it != config.end() && it->is_string() && !it->get<std::string>().empty() &&
                  it->get<std::string>()[0] >= '5';
  return tied && !v5;
}

class T5 : public Seq2SeqModel {
 public:
  T5(const std::string& arch, const nlohmann::json& config, const ConfigSpec& spec)
      : Seq2SeqModel(arch, config) {
    const ConfigView v(config, spec);
    c_.vocab = v.i("vocab_size");
    c_.width = v.i("d_model");
    c_.kv_dim = v.i("d_kv");
    c_.inner = v.i("d_ff");
    c_.enc_layers = v.i("num_layers");
    c_.dec_layers = v.has("num_decoder_layers") ? v.i("num_decoder_layers") : c_.enc_layers;
    c_.heads = v.i("num_heads");
    c_.buckets = v.i("relative_attention_num_buckets");
    c_.max_distance = v.i("relative_attention_max_distance");
    c_.eps = v.d("layer_norm_epsilon");
    c_.factor = v.d("initializer_factor");
    const auto [gated, act] = t5_feed_forward(v.s("feed_forward_proj"));
    c_.gated = gated, c_.act = act;
    c_.tied = v.b("tie_word_embeddings");
    c_.scale_output = v.has("scale_decoder_outputs") ? v.b("scale_decoder_outputs")
                                                     : implied_scale(arch, config, c_.tied);
    c_.pad = v.i("pad_token_id");
    c_.eos = v.has("eos_token_id") ? v.i("eos_token_id") : -1;
    c_.start = v.has("decoder_start_token_id") ? v.i("decoder_start_token_id") : c_.pad;
    shared_ = register_module("shared", torch::nn::Embedding(c_.vocab, c_.width));
    encoder_ = register_module("encoder", Stack(c_, "encoder", c_.enc_layers, slots()));
    decoder_ = register_module("decoder", Stack(c_, "decoder", c_.dec_layers, slots()));
    lm_head_.init(*this, c_.width, c_.vocab, c_.tied);
  }

  int64_t decoder_start_token() const override { return c_.start; }
  int64_t pad_token() const override { return c_.pad; }
  int64_t eos_token() const override { return c_.eos; }

  // transformers' T5PreTrainedModel._init_weights: embeddings and the head
  // N(0, f), norms 1, q N(0, f (d_model d_kv)^-1/2), k, v and the relative
  // bias N(0, f d_model^-1/2), o N(0, f (H d_kv)^-1/2), wi N(0, f d_model^-1/2),
  // wo N(0, f d_ff^-1/2).
  void init_weights() override {
    torch::NoGradGuard no_grad;
    for (auto& item : named_parameters(true)) {
      if (slots().recast_owned(item.key())) continue;  // below
      if (item.key().find("layer_norm") != std::string::npos) {
        item.value().fill_(1.0);
      } else {
        item.value().normal_(0.0, init_std(item.key()));
      }
    }
    slots().init_recast_layers([&](const Slot& s) {
      return DenseInit{torch::randn({s.out, s.in}) * init_std(s.name + ".weight"), at::Tensor()};
    });
  }

  std::vector<std::string> tied_names() const override { return lm_head_.tied_names(); }
  // Older checkpoints also store the stacks' views of the shared embedding.
  bool ignorable(const std::string& name) const override {
    return name == "encoder.embed_tokens.weight" || name == "decoder.embed_tokens.weight";
  }

  at::Tensor encode(const Batch& batch, Recorder* rec) override {
    const at::Tensor ids = check_ids(batch.input_ids, "input_ids", c_.vocab);
    ops::AttentionMask mask = padding_mask(batch.attention_mask, ids, "attention_mask");
    at::Tensor x = shared_(ids);
    mask.bias = encoder_->at(0).sub(0).attention->position_bias(ids.size(1), ids.size(1), 0, x);
    for (size_t i = 0; i < encoder_->block->size(); ++i) {
      x = encoder_->at(i).forward(x, mask, at::Tensor(), ops::AttentionMask(), nullptr);
      if (rec) rec->record(msg("encoder.block.", i), x);
    }
    x = encoder_->final_layer_norm(x);
    if (rec) rec->record("encoder.final_layer_norm", x);
    return x;
  }

  at::Tensor decode(const at::Tensor& decoder_ids, const at::Tensor& memory,
                    const at::Tensor& memory_mask, Recorder* rec, KVCache* cache) override {
    const at::Tensor ids = check_ids(decoder_ids, "decoder_input_ids", c_.vocab);
    RECAST_CHECK(memory.dim() == 3 && memory.size(0) == ids.size(0) && memory.size(2) == c_.width,
                 "encoder states: expected [", ids.size(0), ", S, ", c_.width, "], found ",
                 memory.sizes());
    const int64_t offset = cache ? cache->length() : 0;
    const int64_t t = ids.size(1);
    at::Tensor x = shared_(ids);
    ops::AttentionMask self_mask;
    self_mask.causal = true;
    self_mask.query_offset = offset;
    self_mask.bias = decoder_->at(0).sub(0).attention->position_bias(t, offset + t, offset, x);
    at::Tensor memory_ids = at::empty({memory.size(0), memory.size(1)}, ids.options());
    const ops::AttentionMask cross_mask =
        padding_mask(memory_mask, memory_ids, "encoder attention_mask");
    for (size_t i = 0; i < decoder_->block->size(); ++i) {
      x = decoder_->at(i).forward(x, self_mask, memory, cross_mask, cache);
      if (rec) rec->record(msg("decoder.block.", i), x);
    }
    if (cache) cache->tokens += t;
    x = decoder_->final_layer_norm(x);
    if (rec) rec->record("decoder.final_layer_norm", x);
    if (c_.scale_output) x = x * std::pow(static_cast<double>(c_.width), -0.5);
    return lm_head_(x, shared_->weight);
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    Batch b;
    b.input_ids = at::randint(c_.vocab, {batch_size, 16}, gen, at::kLong);
    b.decoder_input_ids = at::randint(c_.vocab, {batch_size, 8}, gen, at::kLong);
    b.decoder_input_ids.select(1, 0).fill_(c_.start);
    return b;
  }

 private:
  double init_std(const std::string& name) const {
    const double f = c_.factor;
    auto last = [&](const char* local) { return ends_with(name, std::string(".") + local + ".weight"); };
    const auto d = static_cast<double>(c_.width);
    if (last("q")) return f * std::pow(d * static_cast<double>(c_.kv_dim), -0.5);
    if (last("k") || last("v") || last("relative_attention_bias") || last("wi") || last("wi_0") ||
        last("wi_1")) {
      return f * std::pow(d, -0.5);
    }
    if (last("o")) return f * std::pow(static_cast<double>(c_.heads * c_.kv_dim), -0.5);
    if (last("wo")) return f * std::pow(static_cast<double>(c_.inner), -0.5);
    return f;  // shared, lm_head
  }

  T5Config c_;
  torch::nn::Embedding shared_{nullptr};
  Stack encoder_{nullptr}, decoder_{nullptr};
  LmHead lm_head_;
};

// transformers' T5Config defaults, or MT5Config's (mt5).
ConfigSpec t5_spec(bool mt5) {
  ConfigSpec spec;
  spec.style = ConfigStyle::Transformers;
  spec.keys = {
      int_key("vocab_size", mt5 ? 250112 : 32128, 1, 1 << 24),
      int_key("d_model", 512, 1, 1 << 17),
      int_key("d_kv", 64, 1, 1 << 14),
      int_key("d_ff", mt5 ? 1024 : 2048, 1, 1 << 20),
      int_key("num_layers", mt5 ? 8 : 6, 1, 4096),
      int_key("num_decoder_layers", nullptr, 1, 4096),
      int_key("num_heads", mt5 ? 6 : 8, 1, 4096),
      int_key("relative_attention_num_buckets", 32, 2, 1 << 16),
      int_key("relative_attention_max_distance", 128, 2, 1 << 24),
      double_key("layer_norm_epsilon", 1e-6, 0, 1),
      double_key("initializer_factor", 1.0, 0, 1e6),
      string_key("feed_forward_proj", mt5 ? "gated-gelu" : "relu",
                 {"relu", "gelu", "silu", "gated-relu", "gated-gelu", "gated-silu"}),
      // Derived from feed_forward_proj by T5Config (and saved): checked to agree.
      any_key("dense_act_fn"), any_key("is_gated_act"),
      bool_key("tie_word_embeddings", !mt5),
      bool_key("scale_decoder_outputs", nullptr),
      int_key("pad_token_id", 0, 0, 1 << 24),
      int_key("eos_token_id", 1, 0, 1 << 24),
      int_key("decoder_start_token_id", nullptr, 0, 1 << 24),
      // Accepted, not used: no dropout; old configs' n_positions bounds nothing.
      ignored_key("dropout_rate"), ignored_key("classifier_dropout"), ignored_key("n_positions")};
  spec.checks.push_back([](const ConfigView& v) {
    const auto [gated, act] = t5_feed_forward(v.s("feed_forward_proj"));
    if (v.has("is_gated_act")) {
      RECAST_CHECK(v.raw("is_gated_act").is_boolean() && v.raw("is_gated_act").get<bool>() == gated,
                   "config key 'is_gated_act': ", v.raw("is_gated_act").dump(),
                   " contradicts feed_forward_proj ", quote(v.s("feed_forward_proj")));
    }
    if (v.has("dense_act_fn")) {
      RECAST_CHECK(v.raw("dense_act_fn").is_string() && v.raw("dense_act_fn").get<std::string>() == act,
                   "config key 'dense_act_fn': ", v.raw("dense_act_fn").dump(),
                   " contradicts feed_forward_proj ", quote(v.s("feed_forward_proj")), " (", act, ")");
    }
    const int64_t buckets = v.i("relative_attention_num_buckets");
    RECAST_CHECK(buckets >= 4, "config key 'relative_attention_num_buckets': ", buckets,
                 " is too few (at least 4: exact and logarithmic buckets in both directions)");
    const int64_t exact = buckets / 4;  // the encoder's exact distances per direction
    RECAST_CHECK(v.i("relative_attention_max_distance") > exact,
                 "config key 'relative_attention_max_distance': ", v.i("relative_attention_max_distance"),
                 " must exceed the ", exact, " exact distances of ", buckets, " buckets");
    const int64_t vocab = v.i("vocab_size");
    for (const char* key : {"pad_token_id", "eos_token_id", "decoder_start_token_id"}) {
      if (v.has(key)) {
        RECAST_CHECK(v.i(key) < vocab, "config key '", key, "': ", v.i(key),
                     " is outside the vocabulary [0, ", vocab, ")");
      }
    }
  });
  spec.parameters = [](const ConfigView& v) {
    const auto w = static_cast<double>(v.i("d_model"));
    const auto inner = static_cast<double>(v.i("num_heads") * v.i("d_kv"));
    const double ff = static_cast<double>(v.i("d_ff")) * w *
                      (t5_feed_forward(v.s("feed_forward_proj")).first ? 3 : 2);
    const auto enc = static_cast<double>(v.i("num_layers"));
    const double dec = v.has("num_decoder_layers") ? static_cast<double>(v.i("num_decoder_layers")) : enc;
    return 2 * static_cast<double>(v.i("vocab_size")) * w + enc * (4 * w * inner + ff) +
           dec * (8 * w * inner + ff);
  };
  return spec;
}

void add_t5(Registry<ModelFactory>& r, const std::string& arch, const char* summary) {
  ModelFactory f;
  f.style = ConfigStyle::Transformers;
  f.spec = t5_spec(arch == "mt5");
  f.make = [spec = f.spec, arch](const nlohmann::json& c) { return std::make_shared<T5>(arch, c, spec); };
  f.tasks = {Task::Seq2SeqLM};
  f.heads = {"lm_head."};
  f.fit = [](const DataFacts& d, bool head_only) {
    std::vector<std::pair<std::string, nlohmann::json>> out;
    if (head_only) return out;
    out.emplace_back("vocab_size", d.vocab);
    if (d.eos >= 0) out.emplace_back("eos_token_id", d.eos);
    return out;
  };
  f.tiny = {{"d_model", 32}, {"d_kv", 8}, {"d_ff", 64}, {"num_layers", 2},
            {"num_decoder_layers", 2}, {"num_heads", 4}, {"vocab_size", 60},
            {"relative_attention_num_buckets", 8}, {"relative_attention_max_distance", 16}};
  r.add(arch, summary, f);
}

}  // namespace

std::pair<bool, std::string> t5_feed_forward(const std::string& proj) {
  const bool gated = proj.rfind("gated-", 0) == 0;
  std::string act = gated ? proj.substr(6) : proj;
  if (proj == "gated-gelu") act = "gelu_new";  // as T5Config maps it
  return {gated, act};
}

RECAST_REGISTER_MODEL(t5) {
  add_t5(r, "t5",
         "T5 encoder-decoder (transformers T5ForConditionalGeneration: relative position buckets, "
         "RMS norms, relu or gated-gelu feed-forward)");
  add_t5(r, "mt5", "mT5 (the T5 layout under model_type mt5: gated-gelu, untied head)");
}

}  // namespace recast::models
