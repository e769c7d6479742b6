#include "recast/layers/conv_mixer.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::layers {
namespace {

constexpr const char* kBlock = "config 'recast_conv'";

}  // namespace

ConvConfig ConvConfig::parse(const nlohmann::json& j) {
  RECAST_CHECK(j.is_object(), kBlock, ": expected an object, found ", j.dump());
  ConvConfig c;
  try {
    for (const auto& [key, value] : j.items()) {
      if (key == "kind") {
        c.kind = value.get<std::string>();
      } else if (key == "modules") {
        c.modules = value.get<std::vector<std::string>>();
      } else if (key == "kernel_size") {
        if (value.is_number_integer()) {
          c.kernels = {value.get<int64_t>()};
        } else {
          c.kernels = value.get<std::vector<int64_t>>();
        }
      } else if (key == "heads") {
        c.heads = value.get<int64_t>();
      } else if (key == "dilation") {
        c.dilation = value.get<int64_t>();
      } else if (key == "normalize") {
        c.normalize = value.get<std::string>();
      } else if (key == "weight_dropout") {
        c.weight_dropout = value.get<double>();
      } else {
        throw Error(msg(kBlock, ": unknown key ", quote(key),
                        " (known: kind, modules, kernel_size, heads, dilation, normalize, weight_dropout)"));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(msg(kBlock, ": ", e.what()));
  }
  RECAST_CHECK(c.kind == "lightweight" || c.kind == "dynamic" || c.kind == "dilated", kBlock,
               ": kind ", quote(c.kind), " is not one of lightweight, dynamic, dilated");
  RECAST_CHECK(!c.modules.empty(), kBlock, ": 'modules' names no attention module");
  // One width for every module, or one per module.
  if (c.kernels.size() == 1) c.kernels.assign(c.modules.size(), c.kernels.front());
  RECAST_CHECK(c.kernels.size() == c.modules.size(), kBlock, ": kernel_size has ", c.kernels.size(),
               " widths for ", c.modules.size(), " modules");
  for (int64_t k : c.kernels) {
    RECAST_CHECK(k >= 1 && k <= 4096, kBlock, ": kernel_size ", k, " outside [1, 4096]");
  }
  RECAST_CHECK(c.heads >= 0 && c.heads <= 65536, kBlock, ": heads ", c.heads, " outside [0, 65536]");
  RECAST_CHECK(c.dilation >= 1 && c.dilation <= 4096, kBlock, ": dilation ", c.dilation,
               " outside [1, 4096]");
  RECAST_CHECK(c.dilation == 1 || c.kind == "dilated", kBlock, ": dilation ", c.dilation,
               " is for kind dilated, not ", c.kind);
  RECAST_CHECK(c.normalize == "softmax" || (c.normalize == "none" && c.kind == "dilated"), kBlock,
               ": normalize ", quote(c.normalize), " (softmax; none only for kind dilated)");
  RECAST_CHECK(c.weight_dropout >= 0 && c.weight_dropout < 1, kBlock, ": weight_dropout ",
               c.weight_dropout, " outside [0, 1)");
  for (size_t i = 0; i < c.modules.size(); ++i) {
    for (size_t k = 0; k < i; ++k) {
      RECAST_CHECK(c.modules[k] != c.modules[i], kBlock, ": module ", quote(c.modules[i]), " listed twice");
    }
  }
  return c;
}

nlohmann::json ConvConfig::to_json() const {
  return {{"kind", kind},          {"modules", modules},   {"kernel_size", kernels},
          {"heads", heads},        {"dilation", dilation}, {"normalize", normalize},
          {"weight_dropout", weight_dropout}};
}

int64_t ConvConfig::kernel_of(const std::string& module) const {
  for (size_t i = 0; i < modules.size(); ++i) {
    if (modules[i] == module) return kernels[i];
  }
  return 0;
}

ConvKernelImpl::ConvKernelImpl(const ConvConfig& config, int64_t channels, int64_t heads, int64_t kernel)
    : kind_(config.kind), normalize_(config.normalize), dropout_(config.weight_dropout),
      heads_(heads), kernel_(kernel) {
  if (kind_ == "lightweight") {
    weight = register_parameter("weight", torch::empty({heads, kernel}));
  } else if (kind_ == "dilated") {
    weight = register_parameter("weight", torch::empty({channels, kernel}));
  } else {
    weight = register_parameter("weight", torch::empty({heads * kernel, channels}));
    bias = register_parameter("bias", torch::empty({heads * kernel}));
  }
  reset_parameters();
}

void ConvKernelImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  if (kind_ == "dynamic") {
    torch::nn::init::xavier_uniform_(weight);
    bias.zero_();
  } else {
    // fairseq's kernels are [H, 1, K]: fan_in K, fan_out H K.
    const auto rows = static_cast<double>(weight.size(0)), k = static_cast<double>(kernel_);
    const double bound = std::sqrt(6.0 / (k + rows * k));
    weight.uniform_(-bound, bound);
  }
}

at::Tensor ConvKernelImpl::forward(const at::Tensor& g) {
  at::Tensor w;
  if (kind_ == "dynamic") {
    w = at::linear(g, weight.to(g.scalar_type()), bias.to(g.scalar_type()))
            .view({g.size(0), g.size(1), heads_, kernel_});
  } else {
    w = weight;
  }
  // The softmax in fp32, as fairseq's (and every) normalised kernel is.
  if (normalize_ == "softmax") w = at::softmax(w, -1, at::kFloat).to(w.scalar_type());
  if (is_training() && dropout_ > 0) w = at::dropout(w, dropout_, /*train=*/true);
  return w;
}

ConvMixerImpl::ConvMixerImpl(AttentionSpec spec, const ConvConfig& config, int64_t in, int64_t out,
                             bool bias, int64_t kernel)
    : AttentionCoreImpl(spec), config_(config), channels_(out), kernel_(kernel) {
  RECAST_CHECK(out == spec.heads * spec.head_dim, kBlock, ": the output projection takes ", out,
               " channels, not heads * head_dim = ", spec.heads * spec.head_dim);
  const int64_t heads = config.heads > 0 ? config.heads : spec.heads;
  RECAST_CHECK(config.kind == "dilated" || out % heads == 0, kBlock, ": ", out,
               " channels do not split into ", heads, " kernel heads");
  conv_glu = register_module("conv_glu", torch::nn::Linear(torch::nn::LinearOptions(in, 2 * out).bias(bias)));
  conv = register_module("conv", ConvKernel(config, out, heads, kernel));
}

int64_t ConvMixerImpl::window() const {
  return spec().causal ? config_.dilation * (kernel_ - 1) : 0;
}

at::Tensor ConvMixerImpl::mix(const at::Tensor& x, const ops::AttentionMask& mask, KVCache* cache) {
  const int64_t b = x.size(0), t = x.size(1);
  // at::glu: the first half times the sigmoid of the second, one kernel.
  at::Tensor g = at::glu(conv_glu->forward(x), -1);
  if (mask.key_padding.defined() && !mask.slot.defined()) {
    const at::Tensor real = mask.key_padding.narrow(1, mask.query_offset, t);
    g = g.masked_fill(real.logical_not().unsqueeze(-1), 0);
  }
  const at::Tensor w = conv->forward(g);
  ops::TokenConvOptions o;
  o.dilation = config_.dilation, o.causal = spec().causal, o.path = path;
  at::Tensor in = g;
  if (cache != nullptr) {
    RECAST_CHECK(spec().causal, "conv block: only a causal layer decodes with a cache");
    const auto layer = static_cast<size_t>(spec().layer);
    if (cache->windows.size() <= layer) cache->windows.resize(layer + 1);
    at::Tensor& past = cache->windows[layer];
    const int64_t keep = window();
    if (!past.defined() || past.size(0) != b || past.scalar_type() != g.scalar_type()) {
      past = at::zeros({b, keep, channels_}, g.options());
    }
    in = at::cat({past, g}, 1);
    o.history = keep;
    // In place: the window's tensor stays the same (a captured step reads it).
    past.copy_(in.narrow(1, in.size(1) - keep, keep));
  }
  at::Tensor y = ops::token_conv(in, w, o)
                     .view({b, t, spec().heads, spec().head_dim})
                     .transpose(1, 2);
  if (probe.on) {
    RECAST_CHECK(teacher.defined() && teacher.sizes() == y.sizes(), "attention transfer: layer ",
                 spec().layer, " has no teacher output of shape ", y.sizes());
    y = probe.compare(y, teacher);
  }
  return y;
}

at::Tensor ConvMixerImpl::forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const ops::AttentionMask&, KVCache*) {
  throw Error("conv block: takes the attention's input (mix), not q, k, v");
}

std::string ConvMixerImpl::describe() const {
  std::string what = msg(config_.kind, " conv (K ", kernel_);
  if (config_.kind == "dilated") what += msg(", dilation ", config_.dilation, ", ", config_.normalize);
  if (config_.kind != "dilated") what += msg(", ", conv->weight.size(0) / (config_.kind == "dynamic" ? kernel_ : 1), " heads");
  return what + (spec().causal ? ", causal)" : ", centred)");
}

}  // namespace recast::layers
