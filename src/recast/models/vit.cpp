// Vision transformers in timm's VisionTransformer layout: patch_embed.proj,
// cls_token, pos_embed, blocks.N.{norm1, attn.{qkv, proj}, norm2, mlp.{fc1, fc2}},
// norm, head. Architecture names carry timm's defaults (patch 16, LayerNorm eps
// 1e-6, class-token pooling), which model_args override (img_size, patch_size,
// depth, embed_dim, num_heads, in_chans, num_classes, mlp_ratio, qkv_bias).

#include "recast/core/error.h"
#include "recast/models/model.h"
#include "recast/ops/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::models {
namespace {

namespace nn = torch::nn;

struct VitConfig {
  int64_t img_h, img_w, patch, in_chans, num_classes, width, depth, heads, hidden;
  bool qkv_bias;
  double eps = 1e-6;
};

nn::LayerNorm layer_norm(const VitConfig& c) {
  return nn::LayerNorm(nn::LayerNormOptions({c.width}).eps(c.eps));
}

// A Linear slot registered on `parent` as `local`.
nn::AnyModule linear(Slots& slots, nn::Module& parent, const std::string& prefix,
                     const char* local, int64_t in, int64_t out, bool bias) {
  Slot s;
  s.name = prefix + local, s.in = in, s.out = out, s.bias = bias;
  return slots.layer(parent, local, s, [&] {
    return nn::AnyModule(nn::Linear(nn::LinearOptions(in, out).bias(bias)));
  });
}

struct AttentionImpl : nn::Module {
  AttentionImpl(const VitConfig& c, const std::string& prefix, int64_t layer, Slots& slots)
      : heads(c.heads) {
    // The attention slot first, then the projections that feed it (a recast
    // that reshapes them, Refiner's shared maps, knows the core by then).
    Slot s;
    s.name = prefix.substr(0, prefix.size() - 1);  // "blocks.N.attn"
    s.attention.layer = layer, s.attention.heads = s.attention.kv_heads = c.heads;
    s.attention.head_dim = c.width / c.heads;
    s.attention.scale = 1.0 / std::sqrt(static_cast<double>(c.width / c.heads));
    s.query = {prefix + "qkv", 0}, s.key = {prefix + "qkv", c.width};
    s.value = {prefix + "qkv", 2 * c.width}, s.output = prefix + "proj";
    core = slots.attention(*this, s);
    qkv = linear(slots, *this, prefix, "qkv", c.width, 3 * c.width, c.qkv_bias);
    proj = linear(slots, *this, prefix, "proj", c.width, c.width, true);
  }
  at::Tensor forward(const at::Tensor& x) {
    const int64_t b = x.size(0), n = x.size(1), w = x.size(2), d = w / heads;
    at::Tensor t = qkv.forward(x).reshape({b, n, 3, heads, d}).permute({2, 0, 3, 1, 4});
    at::Tensor y = core->forward(t[0], t[1], t[2], ops::AttentionMask{}, nullptr);
    return proj.forward(y.transpose(1, 2).reshape({b, n, w}));
  }
  int64_t heads;
  nn::AnyModule qkv, proj;  // nn::Linear, or a recast's layer
  std::shared_ptr<layers::AttentionCoreImpl> core;
};
TORCH_MODULE(Attention);

struct MlpImpl : nn::Module {
  MlpImpl(const VitConfig& c, const std::string& prefix, Slots& slots) {
    fc1 = linear(slots, *this, prefix, "fc1", c.width, c.hidden, true);
    fc2 = linear(slots, *this, prefix, "fc2", c.hidden, c.width, true);
  }
  at::Tensor forward(const at::Tensor& x) { return fc2.forward(at::gelu(fc1.forward(x))); }
  nn::AnyModule fc1, fc2;  // nn::Linear, or a recast's layer
};
TORCH_MODULE(Mlp);

struct BlockImpl : nn::Module {
  BlockImpl(const VitConfig& c, int64_t index, Slots& slots) {
    const std::string prefix = msg("blocks.", index, ".");
    norm1 = register_module("norm1", layer_norm(c));
    attn = register_module("attn", Attention(c, prefix + "attn.", index, slots));
    norm2 = register_module("norm2", layer_norm(c));
    mlp = register_module("mlp", Mlp(c, prefix + "mlp.", slots));
  }
  at::Tensor forward(at::Tensor x) {
    x = x + attn(norm1(x));
    return x + mlp(norm2(x));
  }
  nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

struct PatchEmbedImpl : nn::Module {
  explicit PatchEmbedImpl(const VitConfig& c) {
    proj = register_module(
        "proj", nn::Conv2d(nn::Conv2dOptions(c.in_chans, c.width, c.patch).stride(c.patch)));
  }
  nn::Conv2d proj{nullptr};
};
TORCH_MODULE(PatchEmbed);

struct Defaults {
  const char* name;
  int64_t width, depth, heads;
};

// Resample outside [-2, 2] (absolute, as timm's trunc_normal_ defaults).
void trunc_normal(at::Tensor t, double std) {
  t.normal_(0.0, std);
  for (at::Tensor bad = t.abs() > 2.0; bad.any().item<bool>(); bad = t.abs() > 2.0) {
    t.masked_scatter_(bad, at::empty_like(t).normal_(0.0, std).masked_select(bad));
  }
}

// img_size: an integer or [H, W] (default 224).
std::pair<int64_t, int64_t> image_size(const ConfigView& v) {
  const auto& size = v.raw("img_size");
  if (size.is_null()) return {224, 224};
  if (size.is_number_integer() && size.get<int64_t>() > 0 && size.get<int64_t>() <= (1 << 16)) {
    return {size.get<int64_t>(), size.get<int64_t>()};
  }
  if (size.is_array() && size.size() == 2 && size[0].is_number_integer() &&
      size[1].is_number_integer() && size[0].get<int64_t>() > 0 && size[1].get<int64_t>() > 0 &&
      size[0].get<int64_t>() <= (1 << 16) && size[1].get<int64_t>() <= (1 << 16)) {
    return {size[0].get<int64_t>(), size[1].get<int64_t>()};
  }
  throw Error(msg("config key 'img_size': expected an integer or [H, W] in [1, 65536], found ",
                  size.dump()));
}

class Vit : public Model {
 public:
  Vit(const Defaults& d, const nlohmann::json& config, const ConfigSpec& spec)
      : Model(d.name, config) {
    const ConfigView v(config, spec);
    std::tie(c_.img_h, c_.img_w) = image_size(v);
    c_.patch = v.i("patch_size");
    c_.in_chans = v.i("in_chans");
    c_.num_classes = v.i("num_classes");
    c_.width = v.i("embed_dim");
    c_.depth = v.i("depth");
    c_.heads = v.i("num_heads");
    c_.hidden = static_cast<int64_t>(static_cast<double>(c_.width) * v.d("mlp_ratio"));
    c_.qkv_bias = v.b("qkv_bias");
    const int64_t patches = (c_.img_h / c_.patch) * (c_.img_w / c_.patch);
    patch_embed = register_module("patch_embed", PatchEmbed(c_));
    cls_token = register_parameter("cls_token", torch::zeros({1, 1, c_.width}));
    pos_embed = register_parameter("pos_embed", torch::randn({1, patches + 1, c_.width}) * 0.02);
    blocks = register_module("blocks", nn::ModuleList());
    for (int64_t i = 0; i < c_.depth; ++i) blocks->push_back(Block(c_, i, slots()));
    norm = register_module("norm", layer_norm(c_));
    head = linear(slots(), *this, "", "head", c_.width, c_.num_classes, true);
  }

  Task task() const override { return Task::ImageClassification; }

  // timm's ViT init: truncated N(0, 0.02) for Linear weights and pos_embed,
  // N(0, 1e-6) for cls_token, zero biases, LayerNorm 1 / 0; the patch
  // embedding keeps torch's Conv2d init.
  void init_weights() override {
    torch::NoGradGuard no_grad;
    for (auto& item : named_modules("", false)) {
      if (auto* linear = item.value()->as<nn::Linear>()) {
        trunc_normal(linear->weight, 0.02);
        if (linear->bias.defined()) linear->bias.zero_();
      } else if (auto* ln = item.value()->as<nn::LayerNorm>()) {
        ln->weight.fill_(1.0);
        ln->bias.zero_();
      } else if (auto* conv = item.value()->as<nn::Conv2d>()) {
        conv->reset_parameters();
      }
    }
    // Layers a recast built start from the dense init.
    slots().init_recast_layers([](const Slot& s) {
      at::Tensor w = torch::empty({s.out, s.in});
      trunc_normal(w, 0.02);
      return DenseInit{w, s.bias ? torch::zeros({s.out}) : at::Tensor()};
    });
    trunc_normal(pos_embed, 0.02);
    cls_token.normal_(0.0, 1e-6);
  }

  at::Tensor forward(const Batch& batch, Recorder* rec, KVCache*) override {
    const at::Tensor& px = batch.pixel_values;
    RECAST_CHECK(px.defined(), "pixel_values: missing (a ViT takes float [B, C, H, W])");
    RECAST_CHECK(px.dim() == 4 && px.size(1) == c_.in_chans && px.size(2) == c_.img_h &&
                     px.size(3) == c_.img_w,
                 "pixel_values: expected [B, ", c_.in_chans, ", ", c_.img_h, ", ", c_.img_w,
                 "] (the model's img_size), found ", px.sizes());
    at::Tensor x = patch_embed->proj(px).flatten(2).transpose(1, 2);  // [B, N, D]
    if (rec) rec->record("patch_embed", x);
    x = at::cat({cls_token.expand({x.size(0), 1, c_.width}), x}, 1) + pos_embed;
    for (size_t i = 0; i < blocks->size(); ++i) {
      x = blocks[i]->as<Block>()->forward(x);
      if (rec) rec->record(msg("blocks.", i), x);
    }
    x = norm(x);
    if (rec) rec->record("norm", x);
    return head.forward(x.select(1, 0));
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {{}, {}, at::randn({batch_size, c_.in_chans, c_.img_h, c_.img_w}, gen, at::kFloat), {}, {}};
  }

 private:
  VitConfig c_;
  PatchEmbed patch_embed{nullptr};
  at::Tensor cls_token, pos_embed;
  nn::ModuleList blocks{nullptr};
  nn::LayerNorm norm{nullptr};
  nn::AnyModule head;  // nn::Linear, or a recast's layer
};

ConfigSpec vit_spec(const Defaults& d) {
  ConfigSpec spec;
  spec.style = ConfigStyle::Timm;
  spec.keys = {any_key("img_size"),
               int_key("patch_size", 16, 1, 1 << 16),
               int_key("in_chans", 3, 1, 4096),
               int_key("num_classes", 1000, 1, 1 << 22),
               int_key("embed_dim", d.width, 1, 1 << 16),
               int_key("depth", d.depth, 1, 4096),
               int_key("num_heads", d.heads, 1, 4096),
               double_key("mlp_ratio", 4.0, 1e-3, 64),
               bool_key("qkv_bias", true),
               default_only_key("class_token", true),
               default_only_key("no_embed_class", false),
               default_only_key("pre_norm", false),
               default_only_key("dynamic_img_size", false),
               string_key("global_pool", "token", {"token"}),
               default_only_key("qk_norm", false), default_only_key("scale_attn_norm", false),
               default_only_key("scale_mlp_norm", false), default_only_key("proj_bias", true),
               default_only_key("init_values", nullptr), default_only_key("pos_embed", "learn"),
               default_only_key("reg_tokens", 0), default_only_key("final_norm", true),
               default_only_key("fc_norm", nullptr), default_only_key("pool_include_prefix", false),
               default_only_key("dynamic_img_pad", false), default_only_key("act_layer", nullptr),
               default_only_key("norm_layer", nullptr), default_only_key("embed_norm_layer", nullptr),
               ignored_key("weight_init"), ignored_key("fix_init"), ignored_key("device"),
               ignored_key("dtype"),
               // Accepted, not used: recast trains without dropout.
               ignored_key("drop_rate"), ignored_key("pos_drop_rate"),
               ignored_key("patch_drop_rate"), ignored_key("proj_drop_rate"),
               ignored_key("attn_drop_rate"), ignored_key("drop_path_rate")};
  spec.checks.push_back([](const ConfigView& v) {
    RECAST_CHECK(v.i("embed_dim") % v.i("num_heads") == 0, "config key 'num_heads': embed_dim ",
                 v.i("embed_dim"), " is not a multiple of num_heads ", v.i("num_heads"));
    const auto [h, w] = image_size(v);
    RECAST_CHECK(h % v.i("patch_size") == 0 && w % v.i("patch_size") == 0,
                 "config key 'img_size': ", h, "x", w, " is not a multiple of patch_size ",
                 v.i("patch_size"));
  });
  spec.parameters = [](const ConfigView& v) {
    const double w = static_cast<double>(v.i("embed_dim"));
    const auto [h, wd] = image_size(v);
    const double patches = static_cast<double>(h / v.i("patch_size")) * static_cast<double>(wd / v.i("patch_size"));
    return static_cast<double>(v.i("depth")) * (4 * w * w + 2 * w * w * v.d("mlp_ratio")) +
           (patches + 1) * w + w * static_cast<double>(v.i("num_classes"));
  };
  return spec;
}

}  // namespace

RECAST_REGISTER_MODEL(vit) {
  for (const Defaults& d :
       {Defaults{"vit_tiny_patch16_224", 192, 12, 3}, Defaults{"vit_small_patch16_224", 384, 12, 6},
        Defaults{"vit_base_patch16_224", 768, 12, 12},
        Defaults{"vit_large_patch16_224", 1024, 24, 16}}) {
    ModelFactory f;
    f.style = ConfigStyle::Timm;
    f.spec = vit_spec(d);
    f.make = [d, spec = f.spec](const nlohmann::json& c) { return std::make_shared<Vit>(d, c, spec); };
    f.tasks = {Task::ImageClassification};
    f.heads = {"head."};
    f.fit = [](const DataFacts& data, bool head_only) {
      std::vector<std::pair<std::string, nlohmann::json>> out = {
          {"num_classes", static_cast<int64_t>(data.classes.size())}};
      if (head_only) return out;
      out.emplace_back("in_chans", data.channels);
      out.emplace_back("img_size", nlohmann::json::array({data.height, data.width}));
      return out;
    };
    f.tiny = {{"model_args",
               {{"img_size", 32}, {"depth", 2}, {"embed_dim", 32}, {"num_heads", 4}, {"num_classes", 3}}}};
    r.add(d.name,
          msg("ViT (timm layout), ", d.width, " wide, ", d.depth, " blocks, ", d.heads,
              " heads, patch 16"),
          f);
  }
}

}  // namespace recast::models
