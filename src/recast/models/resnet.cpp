// ResNet in the timm / torchvision layout: conv1, bn1, layer1..4 of BasicBlock
// or Bottleneck (conv1..3, bn1..3, downsample.{0,1}), fc; BatchNorm with running
// statistics; any input channels and image size. timm's architecture names carry
// their defaults (resnet18/34: BasicBlock; resnet50/101/152: Bottleneck), which
// model_args override (num_classes, in_chans, channels, layers).
// Every convolution and the classifier are slots (models/slots.h) a recast
// may fill; the blocks' own convolutions carry the role "block".

#include "recast/core/error.h"
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

// A convolution slot without bias, padded to keep the size at stride 1.
nn::AnyModule conv(Slots& slots, const std::string& name, int64_t in, int64_t out, int64_t k,
                   int64_t stride, const char* role = "") {
  Slot s;
  s.kind = SlotKind::Conv2d, s.name = name, s.role = role, s.in = in, s.out = out;
  s.kernel = k, s.stride = stride, s.padding = k / 2;
  return slots.build(s, [&] {
    return nn::AnyModule(
        nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false)));
  });
}

nn::BatchNorm2d bn(int64_t c) {
  return nn::BatchNorm2d(nn::BatchNorm2dOptions(c).eps(1e-5));
}

struct BlockImpl : nn::Module {
  BlockImpl(bool is_bottleneck, int64_t in, int64_t planes, int64_t stride, const std::string& name,
            Slots& slots)
      : bottleneck(is_bottleneck) {
    const int64_t out = bottleneck ? planes * 4 : planes;
    auto slot = [&](const char* conv_name, nn::AnyModule& into, int64_t i, int64_t o, int64_t k,
                    int64_t s) {
      into = conv(slots, name + "." + conv_name, i, o, k, s, "block");
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
          "downsample", nn::Sequential(conv(slots, name + ".downsample.0", in, out, 1, stride), bn(out)));
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = at::relu(bn1(conv1.forward(x)));
    y = bn2(conv2.forward(y));
    if (bottleneck) y = bn3(conv3.forward(at::relu(y)));
    return at::relu(y + (downsample ? downsample->forward(x) : x));
  }
  bool bottleneck;
  nn::AnyModule conv1, conv2, conv3;  // nn::Conv2d, or a recast's layer
  nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Block);

class ResNet : public Model {
 public:
  ResNet(const std::string& arch, const nlohmann::json& config, const ConfigSpec& spec,
         bool bottleneck)
      : Model(arch, config) {
    const ConfigView v(config, spec);
    c_.bottleneck = bottleneck;
    c_.layers = v.ints("layers");
    c_.channels = v.ints("channels");
    c_.num_classes = v.i("num_classes");
    c_.in_chans = v.i("in_chans");
    conv1 = conv(slots(), "conv1", c_.in_chans, 64, 7, 2);
    register_module("conv1", conv1.ptr());
    bn1 = register_module("bn1", bn(64));
    int64_t in = 64;
    for (int s = 0; s < 4; ++s) {
      auto stage = nn::Sequential();
      for (int64_t b = 0; b < c_.layers[s]; ++b) {
        const int64_t stride = (s > 0 && b == 0) ? 2 : 1;
        stage->push_back(
            Block(c_.bottleneck, in, c_.channels[s], stride, msg("layer", s + 1, ".", b), slots()));
        in = c_.bottleneck ? c_.channels[s] * 4 : c_.channels[s];
      }
      stages_.push_back(register_module(msg("layer", s + 1), stage));
    }
    Slot head;
    head.name = "fc", head.in = in, head.out = c_.num_classes, head.bias = true;
    fc = slots().layer(*this, "fc", head, [&] {
      return nn::AnyModule(nn::Linear(nn::LinearOptions(head.in, head.out)));
    });
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
      } else if (auto* norm = item.value()->as<nn::BatchNorm2d>()) {
        const bool last = ends_with(item.key(), c_.bottleneck ? ".bn3" : ".bn2");
        norm->weight.fill_(last ? 0.0 : 1.0);
        norm->bias.zero_();
      } else if (auto* linear = item.value()->as<nn::Linear>()) {
        linear->reset_parameters();
      }
    }
    // Layers a recast built start from the dense layer's init:
    // Kaiming-normal (fan-out) convolutions, torch.nn.Linear's uniform.
    slots().init_recast_layers([](const Slot& s) {
      DenseInit d;
      if (s.kind == SlotKind::Conv2d) {
        d.weight = torch::empty({s.out, s.in, s.kernel, s.kernel});
        nn::init::kaiming_normal_(d.weight, 0.0, torch::kFanOut, torch::kReLU);
      } else {
        const double bound = 1.0 / std::sqrt(static_cast<double>(s.in));
        d.weight = torch::empty({s.out, s.in}).uniform_(-bound, bound);
        d.bias = torch::empty({s.out}).uniform_(-bound, bound);
      }
      return d;
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
    return {{}, {}, at::randn({batch_size, c_.in_chans, 64, 64}, gen, at::kFloat), {}, {}};
  }

 private:
  ResNetConfig c_;
  nn::AnyModule conv1;  // nn::Conv2d, or a recast's layer
  nn::BatchNorm2d bn1{nullptr};
  std::vector<nn::Sequential> stages_;
  nn::AnyModule fc;  // nn::Linear, or a recast's layer
};

ConfigSpec resnet_spec(const std::vector<int64_t>& layers) {
  ConfigSpec spec;
  spec.style = ConfigStyle::Timm;
  ConfigKey list = int_key("layers", layers, 1, 1024);
  list.type = KeyType::IntList;
  ConfigKey channels = int_key("channels", std::vector<int64_t>{64, 128, 256, 512}, 1, 1 << 16);
  channels.type = KeyType::IntList;
  spec.keys = {list, channels, int_key("num_classes", 1000, 1, 1 << 22), int_key("in_chans", 3, 1, 4096),
               default_only_key("stem_type", ""), default_only_key("output_stride", 32),
               default_only_key("cardinality", 1), default_only_key("base_width", 64),
               default_only_key("avg_down", false),
               default_only_key("replace_stem_pool", false), default_only_key("block_reduce_first", 1),
               default_only_key("down_kernel_size", 1), default_only_key("aa_layer", nullptr),
               default_only_key("act_layer", "relu"), default_only_key("norm_layer", "batchnorm2d"),
               ignored_key("block_args"), ignored_key("device"), ignored_key("dtype"),
               // Accepted, not used: stem_width only shapes timm's deep stems
               // (refused above); recast trains without dropout.
               ignored_key("stem_width"), ignored_key("drop_rate"), ignored_key("drop_path_rate"),
               ignored_key("drop_block_rate"), ignored_key("zero_init_last"),
               ignored_key("global_pool")};
  spec.checks.push_back([](const ConfigView& v) {
    for (const char* key : {"layers", "channels"}) {
      const auto& value = v.raw(key);
      if (!value.is_null() && value.size() != 4) {
        throw Error(msg("config key '", key, "': expected 4 positive integers, found ", value.dump()));
      }
    }
  });
  spec.parameters = [](const ConfigView& v) {
    double n = 0, in = 64;
    const auto ls = v.ints("layers"), cs = v.ints("channels");
    for (size_t s = 0; s < 4; ++s) {
      const double c = static_cast<double>(cs[s]);
      n += static_cast<double>(ls[s]) * (in * c * 9 + c * c * 9 + 4 * c * c);  // bounds both blocks
      in = 4 * c;
    }
    return n + in * static_cast<double>(v.i("num_classes"));
  };
  return spec;
}

}  // namespace

RECAST_REGISTER_MODEL(resnet) {
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
    ModelFactory f;
    f.style = ConfigStyle::Timm;
    f.spec = resnet_spec(a.layers);
    f.make = [a, spec = f.spec](const nlohmann::json& c) {
      return std::make_shared<ResNet>(a.name, c, spec, a.bottleneck);
    };
    f.tasks = {Task::ImageClassification};
    f.heads = {"fc."};
    f.fit = [](const DataFacts& d, bool head_only) {
      std::vector<std::pair<std::string, nlohmann::json>> out = {
          {"num_classes", static_cast<int64_t>(d.classes.size())}};
      if (!head_only) out.emplace_back("in_chans", d.channels);
      return out;
    };
    f.tiny = {{"model_args", {{"channels", {4, 8, 8, 8}}, {"num_classes", 3}}}};
    r.add(a.name, summary, f);
  }
}

}  // namespace recast::models
