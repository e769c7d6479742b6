// Vision transformers in timm's VisionTransformer layout: patch_embed.proj,
// cls_token, pos_embed, blocks.N.{norm1, attn.{qkv, proj}, norm2, mlp.{fc1, fc2}},
// norm, head. Architecture names carry timm's defaults (patch 16, LayerNorm eps
// 1e-6, class-token pooling), which model_args override (img_size, patch_size,
// depth, embed_dim, num_heads, in_chans, num_classes, mlp_ratio, qkv_bias).

#include "recast/core/error.h"
#include "recast/layers/factorized.h"
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
  std::optional<layers::FactorizedConfig> factorized;  // low-rank projections
};

nn::LayerNorm layer_norm(const VitConfig& c) {
  return nn::LayerNorm(nn::LayerNormOptions({c.width}).eps(c.eps));
}

// A Linear (or FactorizedLinear where the config names it) registered as `name`.
nn::AnyModule linear(nn::Module& parent, const VitConfig& c, const std::string& prefix,
                     const char* name, int64_t in, int64_t out, bool bias) {
  nn::AnyModule m = layers::linear_slot(c.factorized, prefix + name, in, out, bias);
  parent.register_module(name, m.ptr());
  return m;
}

struct AttentionImpl : nn::Module {
  AttentionImpl(const VitConfig& c, const std::string& prefix) : heads(c.heads) {
    qkv = linear(*this, c, prefix, "qkv", c.width, 3 * c.width, c.qkv_bias);
    proj = linear(*this, c, prefix, "proj", c.width, c.width, true);
  }
  at::Tensor forward(const at::Tensor& x) {
    const int64_t b = x.size(0), n = x.size(1), w = x.size(2), d = w / heads;
    at::Tensor t = qkv.forward(x).reshape({b, n, 3, heads, d}).permute({2, 0, 3, 1, 4});
    at::Tensor y = ops::attention(t[0], t[1], t[2], ops::AttentionMask{});
    return proj.forward(y.transpose(1, 2).reshape({b, n, w}));
  }
  int64_t heads;
  nn::AnyModule qkv, proj;  // nn::Linear or layers::FactorizedLinear
};
TORCH_MODULE(Attention);

struct MlpImpl : nn::Module {
  MlpImpl(const VitConfig& c, const std::string& prefix) {
    fc1 = linear(*this, c, prefix, "fc1", c.width, c.hidden, true);
    fc2 = linear(*this, c, prefix, "fc2", c.hidden, c.width, true);
  }
  at::Tensor forward(const at::Tensor& x) { return fc2.forward(at::gelu(fc1.forward(x))); }
  nn::AnyModule fc1, fc2;  // nn::Linear or layers::FactorizedLinear
};
TORCH_MODULE(Mlp);

struct BlockImpl : nn::Module {
  BlockImpl(const VitConfig& c, int64_t index) {
    const std::string prefix = msg("blocks.", index, ".");
    norm1 = register_module("norm1", layer_norm(c));
    attn = register_module("attn", Attention(c, prefix + "attn."));
    norm2 = register_module("norm2", layer_norm(c));
    mlp = register_module("mlp", Mlp(c, prefix + "mlp."));
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

class Vit : public Model {
 public:
  Vit(const Defaults& d, const nlohmann::json& config) : Model(d.name, config) {
    const nlohmann::json args = config.value("model_args", nlohmann::json::object());
    auto size = args.find("img_size");
    if (size == args.end() || size->is_null()) {
      c_.img_h = c_.img_w = 224;
    } else if (size->is_number_integer() && size->get<int64_t>() > 0) {
      c_.img_h = c_.img_w = size->get<int64_t>();
    } else if (size->is_array() && size->size() == 2 && (*size)[0].is_number_integer() &&
               (*size)[1].is_number_integer() && (*size)[0].get<int64_t>() > 0 &&
               (*size)[1].get<int64_t>() > 0) {
      c_.img_h = (*size)[0].get<int64_t>();
      c_.img_w = (*size)[1].get<int64_t>();
    } else {
      throw Error(
          msg("config key 'img_size': expected an integer or [H, W], found ", size->dump()));
    }
    c_.patch = cfg_int(args, "patch_size", 16);
    c_.in_chans = cfg_int(args, "in_chans", 3);
    c_.num_classes = cfg_int(args, "num_classes", cfg_int(config, "num_classes", 1000));
    c_.width = cfg_int(args, "embed_dim", d.width);
    c_.depth = cfg_int(args, "depth", d.depth);
    c_.heads = cfg_int(args, "num_heads", d.heads);
    c_.hidden =
        static_cast<int64_t>(static_cast<double>(c_.width) * cfg_double(args, "mlp_ratio", 4.0));
    c_.qkv_bias = cfg_bool(args, "qkv_bias", true);
    c_.factorized = layers::FactorizedConfig::from(config);
    RECAST_CHECK(c_.width % c_.heads == 0, "config: embed_dim ", c_.width,
                 " is not a multiple of num_heads ", c_.heads);
    RECAST_CHECK(c_.img_h % c_.patch == 0 && c_.img_w % c_.patch == 0, "config: img_size ",
                 c_.img_h, "x", c_.img_w, " is not a multiple of patch_size ", c_.patch);
    for (const char* key : {"class_token", "no_embed_class", "pre_norm", "dynamic_img_size"}) {
      bool expected = key == std::string("class_token");
      if (cfg_bool(args, key, expected) != expected) {
        throw Error(msg("config key '", key, "': only timm's default (",
                        expected ? "true" : "false", ") is supported"));
      }
    }
    std::string pool = cfg_string(args, "global_pool", cfg_string(config, "global_pool", "token"));
    if (pool != "token")
      throw Error(msg("config key 'global_pool': only 'token' is supported, found ", quote(pool)));
    const int64_t patches = (c_.img_h / c_.patch) * (c_.img_w / c_.patch);
    patch_embed = register_module("patch_embed", PatchEmbed(c_));
    cls_token = register_parameter("cls_token", torch::zeros({1, 1, c_.width}));
    pos_embed = register_parameter("pos_embed", torch::randn({1, patches + 1, c_.width}) * 0.02);
    blocks = register_module("blocks", nn::ModuleList());
    for (int64_t i = 0; i < c_.depth; ++i) blocks->push_back(Block(c_, i));
    norm = register_module("norm", layer_norm(c_));
    head = layers::linear_slot(c_.factorized, "head", c_.width, c_.num_classes, true);
    register_module("head", head.ptr());
    if (c_.factorized) layers::check_factorized(*c_.factorized, *this, d.name);
  }

  // The blocks' four projections and the classifier (not the patch embedding).
  std::vector<DenseLayer> factorizable_layers() override {
    std::vector<DenseLayer> out;
    for (const auto& name : layers::torch_dense_layers(*this)) {
      if (name.rfind("patch_embed.", 0) != 0) out.push_back({name, false});
    }
    return out;
  }

  Task task() const override { return Task::ImageClassification; }

  // timm's ViT init: truncated N(0, 0.02) for Linear weights and pos_embed,
  // N(0, 1e-6) for cls_token, zero biases, LayerNorm 1 / 0; the patch
  // embedding keeps torch's Conv2d init.
  void init_weights() override {
    torch::NoGradGuard no_grad;
    auto trunc_normal = [](at::Tensor t, double std) {
      // Resample outside [-2, 2] (absolute, as timm's trunc_normal_ defaults).
      t.normal_(0.0, std);
      for (at::Tensor bad = t.abs() > 2.0; bad.any().item<bool>(); bad = t.abs() > 2.0) {
        t.masked_scatter_(bad, at::empty_like(t).normal_(0.0, std).masked_select(bad));
      }
    };
    for (auto& item : named_modules("", false)) {
      if (auto* linear = item.value()->as<nn::Linear>()) {
        trunc_normal(linear->weight, 0.02);
        if (linear->bias.defined()) linear->bias.zero_();
      } else if (auto* ln = item.value()->as<nn::LayerNorm>()) {
        ln->weight.fill_(1.0);
        ln->bias.zero_();
      } else if (auto* conv = item.value()->as<nn::Conv2d>()) {
        conv->reset_parameters();
      } else if (auto* fl = item.value()->as<layers::FactorizedLinear>()) {
        if (fl->bias.defined()) fl->bias.zero_();
      }
    }
    // Factorized projections: the spectral factors of the dense init.
    layers::init_factorized_from_dense(*this, [&](const std::string&, at::IntArrayRef shape) {
      at::Tensor w = torch::empty(shape);
      trunc_normal(w, 0.02);
      return w;
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
    return {{}, {}, at::randn({batch_size, c_.in_chans, c_.img_h, c_.img_w}, gen, at::kFloat), {}};
  }

 private:
  VitConfig c_;
  PatchEmbed patch_embed{nullptr};
  at::Tensor cls_token, pos_embed;
  nn::ModuleList blocks{nullptr};
  nn::LayerNorm norm{nullptr};
  nn::AnyModule head;  // nn::Linear or layers::FactorizedLinear
};

}  // namespace

void register_vit(Registry<ModelFactory>& r) {
  for (const Defaults& d :
       {Defaults{"vit_tiny_patch16_224", 192, 12, 3}, Defaults{"vit_small_patch16_224", 384, 12, 6},
        Defaults{"vit_base_patch16_224", 768, 12, 12},
        Defaults{"vit_large_patch16_224", 1024, 24, 16}}) {
    r.add(
        d.name,
        msg("ViT (timm layout), ", d.width, " wide, ", d.depth, " blocks, ", d.heads,
            " heads, patch 16"),
        {ConfigStyle::Timm, [d](const nlohmann::json& c) { return std::make_shared<Vit>(d, c); }});
  }
}

}  // namespace recast::models
