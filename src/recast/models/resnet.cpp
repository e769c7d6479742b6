// ResNet in the timm / torchvision layout: conv1, bn1, layer1..4 of BasicBlock
// or Bottleneck (conv1..3, bn1..3, downsample.{0,1}), fc; BatchNorm with running
// statistics; any input channels and image size. timm's architecture names carry
// their defaults (resnet18/34: BasicBlock; resnet50/101/152: Bottleneck), which
// model_args override (num_classes, in_chans, channels, layers).
// A T-CNN conversion (config "recast_tcnn") puts a ConvAttention in the place
// of the named block convolutions, under the same name and weight layout; a
// factorization (config "recast_factorized") puts FactorizedConv2d /
// FactorizedLinear in the place of the named convolutions and classifier.

#include "recast/core/error.h"
#include "recast/layers/conv_attention.h"
#include "recast/layers/factorized.h"
#include "recast/models/model.h"

#include <torch/torch.h>

namespace recast::models {
namespace {

namespace nn = torch::nn;

struct ResNetConfig {
  bool bottleneck;
  std::vector<int64_t> layers, channels;
  int64_t num_classes, in_chans;
};

// The recasts a ResNet's layers may carry (from its config).
struct Recasts {
  std::optional<layers::TcnnConfig> tcnn;
  std::optional<layers::FactorizedConfig> factorized;
};

// A convolution without bias, padded to keep the size at stride 1:
// nn::Conv2d, or FactorizedConv2d where the config factorizes it.
nn::AnyModule conv(const Recasts& r, const std::string& name, int64_t in, int64_t out, int64_t k,
                   int64_t stride) {
  return layers::conv_slot(r.factorized, name, in, out, k, stride, k / 2, false);
}

// A block convolution: as conv(), or ConvAttention where the T-CNN config
// names it.
nn::AnyModule block_conv(const Recasts& r, const std::string& name, int64_t in, int64_t out,
                         int64_t k, int64_t stride) {
  const auto& tcnn = r.tcnn;
  if (tcnn && tcnn->converted(name)) {
    RECAST_CHECK(!(r.factorized && r.factorized->rank(name)), "config: ", quote(name),
                 " is both recast_tcnn and recast_factorized");
    layers::ConvAttentionOptions o;
    o.in = in, o.out = out, o.kernel = k, o.stride = stride, o.alpha = tcnn->alpha,
    o.qk_dim = tcnn->qk_dim;
    return nn::AnyModule(layers::ConvAttention(o));
  }
  return conv(r, name, in, out, k, stride);
}
nn::BatchNorm2d bn(int64_t c) {
  return nn::BatchNorm2d(nn::BatchNorm2dOptions(c).eps(1e-5));
}

struct BlockImpl : nn::Module {
  BlockImpl(bool is_bottleneck, int64_t in, int64_t planes, int64_t stride, const std::string& name,
            const Recasts& recasts)
      : bottleneck(is_bottleneck) {
    const int64_t out = bottleneck ? planes * 4 : planes;
    auto slot = [&](const char* conv_name, nn::AnyModule& into, int64_t i, int64_t o, int64_t k,
                    int64_t s) {
      into = block_conv(recasts, name + "." + conv_name, i, o, k, s);
      register_module(conv_name, into.ptr());
    };
    if (bottleneck) {
      slot("conv1", conv1, in, planes, 1, 1);
      bn1 = register_module("bn1", bn(planes));
      slot("conv2", conv2, planes, planes, 3, stride);
      bn2 = register_module("bn2", bn(planes));
      slot("conv3", conv3, planes, out, 1, 1);
      bn3 = register_module("bn3", bn(out));
    } else {
      slot("conv1", conv1, in, planes, 3, stride);
      bn1 = register_module("bn1", bn(planes));
      slot("conv2", conv2, planes, planes, 3, 1);
      bn2 = register_module("bn2", bn(planes));
    }
    if (stride != 1 || in != out) {
      downsample = register_module(
          "downsample", nn::Sequential(conv(recasts, name + ".downsample.0", in, out, 1, stride), bn(out)));
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = at::relu(bn1(conv1.forward(x)));
    y = bn2(conv2.forward(y));
    if (bottleneck) y = bn3(conv3.forward(at::relu(y)));
    return at::relu(y + (downsample ? downsample->forward(x) : x));
  }
  bool bottleneck;
  nn::AnyModule conv1, conv2, conv3;  // nn::Conv2d or layers::ConvAttention
  nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Block);

std::vector<int64_t> int_list(const nlohmann::json& args, const char* key,
                              std::vector<int64_t> fallback, size_t size) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return fallback;
  std::vector<int64_t> out;
  if (it->is_array()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer() || v.get<int64_t>() <= 0) break;
      out.push_back(v.get<int64_t>());
    }
  }
  if (out.size() != size || out.size() != it->size()) {
    throw Error(
        msg("config key '", key, "': expected ", size, " positive integers, found ", it->dump()));
  }
  return out;
}

class ResNet : public Model {
 public:
  ResNet(const std::string& arch, const nlohmann::json& config, bool bottleneck,
         std::vector<int64_t> layers)
      : Model(arch, config) {
    const nlohmann::json args = config.value("model_args", nlohmann::json::object());
    c_.bottleneck = bottleneck;
    c_.layers = int_list(args, "layers", std::move(layers), 4);
    c_.channels = int_list(args, "channels", {64, 128, 256, 512}, 4);
    c_.num_classes = cfg_int(args, "num_classes", cfg_int(config, "num_classes", 1000));
    c_.in_chans = cfg_int(args, "in_chans", 3);
    for (const char* key :
         {"stem_type", "output_stride", "cardinality", "base_width", "avg_down"}) {
      const auto it = args.find(key);
      const bool default_value = it == args.end() || it->is_null() ||
                                 (key == std::string("stem_type") && *it == "") ||
                                 (key == std::string("output_stride") && *it == 32) ||
                                 (key == std::string("cardinality") && *it == 1) ||
                                 (key == std::string("base_width") && *it == 64) ||
                                 (key == std::string("avg_down") && *it == false);
      if (!default_value)
        throw Error(
            msg("config key '", key, "': only timm's default is supported, found ", it->dump()));
    }
    const Recasts recasts{layers::TcnnConfig::from(config), layers::FactorizedConfig::from(config)};
    conv1 = conv(recasts, "conv1", c_.in_chans, 64, 7, 2);
    register_module("conv1", conv1.ptr());
    bn1 = register_module("bn1", bn(64));
    int64_t in = 64;
    for (int s = 0; s < 4; ++s) {
      auto stage = nn::Sequential();
      for (int64_t b = 0; b < c_.layers[s]; ++b) {
        const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        stage->push_back(
            Block(c_.bottleneck, in, c_.channels[s], stride, msg("layer", s + 1, ".", b), recasts));
        in = c_.bottleneck ? c_.channels[s] * 4 : c_.channels[s];
      }
      stages_.push_back(register_module(msg("layer", s + 1), stage));
    }
    fc = layers::linear_slot(recasts.factorized, "fc", in, c_.num_classes, true);
    register_module("fc", fc.ptr());
    if (recasts.factorized) layers::check_factorized(*recasts.factorized, *this, arch);
  }

  std::vector<DenseLayer> factorizable_layers() override {
    std::vector<DenseLayer> out;
    for (const auto& name : layers::torch_dense_layers(*this)) out.push_back({name, false});
    return out;
  }

  Task task() const override { return Task::ImageClassification; }

  // timm's ResNet init: Kaiming-normal (fan-out, ReLU) convolutions, BatchNorm
  // 1 / 0 with the last BatchNorm of each block zeroed (zero_init_last), the
  // classifier as torch.nn.Linear initialises itself.
  void init_weights() override {
    torch::NoGradGuard no_grad;
    for (auto& item : named_modules("", false)) {
      if (auto* conv = item.value()->as<nn::Conv2d>()) {
        nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
      } else if (auto* ca = item.value()->as<layers::ConvAttention>()) {
        // As the convolution it stands for; the content branch closed.
        nn::init::kaiming_normal_(ca->weight, 0.0, torch::kFanOut, torch::kReLU);
        ca->gate.zero_();
        ca->qk->weight.normal_(0.0, 0.02);
      } else if (auto* norm = item.value()->as<nn::BatchNorm2d>()) {
        const bool last = ends_with(item.key(), c_.bottleneck ? ".bn3" : ".bn2");
        norm->weight.fill_(last ? 0.0 : 1.0);
        norm->bias.zero_();
      } else if (auto* linear = item.value()->as<nn::Linear>()) {
        linear->reset_parameters();
      } else if (auto* fl = item.value()->as<layers::FactorizedLinear>()) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(fl->options().in));
        fl->bias.uniform_(-bound, bound);  // as torch.nn.Linear's
      }
    }
    // Factorized layers: the spectral factors of the dense layer's init
    // (Kaiming-normal fan-out convolutions; torch.nn.Linear's uniform).
    layers::init_factorized_from_dense(*this, [](const std::string&, at::IntArrayRef shape) {
      at::Tensor w = torch::empty(shape);
      if (shape.size() == 4) {
        nn::init::kaiming_normal_(w, 0.0, torch::kFanOut, torch::kReLU);
      } else {
        const double bound = 1.0 / std::sqrt(static_cast<double>(shape[1]));
        w.uniform_(-bound, bound);
      }
      return w;
    });
  }

  at::Tensor forward(const Batch& batch, Recorder* rec, KVCache*) override {
    const at::Tensor& x0 = batch.pixel_values;
    RECAST_CHECK(x0.defined(), "pixel_values: missing (a ResNet takes float [B, C, H, W])");
    RECAST_CHECK(x0.dim() == 4 && x0.size(1) == c_.in_chans, "pixel_values: expected [B, ",
                 c_.in_chans, ", H, W], found ", x0.sizes());
    at::Tensor x = at::relu(bn1(conv1.forward(x0)));
    x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
    for (size_t s = 0; s < stages_.size(); ++s) {
      x = stages_[s]->forward(x);
      if (rec) rec->record(msg("layer", s + 1), x);
    }
    x = x.mean({2, 3});
    if (rec) rec->record("global_pool", x);
    return fc.forward(x);
  }

  Batch example_batch(int64_t batch_size, uint64_t seed) const override {
    auto gen = at::detail::createCPUGenerator(seed);
    return {{}, {}, at::randn({batch_size, c_.in_chans, 64, 64}, gen, at::kFloat), {}};
  }

 private:
  ResNetConfig c_;
  nn::AnyModule conv1;  // nn::Conv2d or layers::FactorizedConv2d
  nn::BatchNorm2d bn1{nullptr};
  std::vector<nn::Sequential> stages_;
  nn::AnyModule fc;  // nn::Linear or layers::FactorizedLinear
};

}  // namespace

void register_resnet(Registry<ModelFactory>& r) {
  struct Arch {
    const char* name;
    bool bottleneck;
    std::vector<int64_t> layers;
  };
  for (const Arch& a :
       {Arch{"resnet18", false, {2, 2, 2, 2}}, Arch{"resnet34", false, {3, 4, 6, 3}},
        Arch{"resnet50", true, {3, 4, 6, 3}}, Arch{"resnet101", true, {3, 4, 23, 3}},
        Arch{"resnet152", true, {3, 8, 36, 3}}}) {
    std::string summary =
        msg("ResNet (timm/torchvision layout), ", a.bottleneck ? "Bottleneck" : "BasicBlock",
            " blocks [", a.layers[0], ", ", a.layers[1], ", ", a.layers[2], ", ", a.layers[3], "]");
    r.add(a.name, summary, {ConfigStyle::Timm, [a](const nlohmann::json& c) {
                              return std::make_shared<ResNet>(a.name, c, a.bottleneck, a.layers);
                            }});
  }
}

}  // namespace recast::models
