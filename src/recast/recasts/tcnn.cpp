// Recast tcnn (d'Ascoli et al. 2021): selected KxK convolutions of a CNN's
// blocks become ConvAttention (layers/conv_attention.h) built from their
// weights: K^2 heads, head i*K+j <-> tap (i, j), content branch closed (gate
// 0), so the network computes what it computed before. BatchNorm after each
// convolution stays as it is. Default: the 3x3 convolutions of the last stage.
//
// Config block "recast_tcnn": {"layers": [conv names], "alpha", "qk_dim"}; it
// claims the Conv2d slots of role "block" it names (ResNet's block convs).
// Training hook: the gates and mean attention distance of each head, logged
// at every evaluation and epoch end ({"split": "tcnn"}).

#include "recast/layers/conv_attention.h"
#include "recast/recasts/recast.h"
#include "recast/train/hooks.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>

namespace recast::recasts {
namespace {

constexpr const char* kKey = "recast_tcnn";

bool convertible(const models::Slot& s) {
  return s.kind == models::SlotKind::Conv2d && s.role == "block" && s.kernel > 1 &&
         s.kernel % 2 == 1 && (s.stride == 1 || s.stride == 2);
}

// Block convolutions with an odd kernel > 1 ("layer4.0.conv2", ...), dense.
std::vector<std::string> candidate_convs(const models::Model& m) {
  std::vector<std::string> out;
  for (const auto* b : slots_of(m, models::SlotKind::Conv2d)) {
    if (convertible(b->slot)) out.push_back(b->slot.name);
  }
  return out;
}

class TcnnFiller : public models::SlotFiller {
 public:
  explicit TcnnFiller(layers::TcnnConfig c) : c_(std::move(c)) {}
  bool claims(const models::Slot& s) const override {
    return s.kind == models::SlotKind::Conv2d && s.role == "block" && c_.converted(s.name);
  }
  torch::nn::AnyModule build(const models::Slot& s) const override {
    RECAST_CHECK(convertible(s), "config 'recast_tcnn': ", quote(s.name), " is a ", s.kernel, "x",
                 s.kernel, " stride ", s.stride, " convolution; T-CNN converts odd kernels > 1 "
                 "at stride 1 or 2");
    layers::ConvAttentionOptions o;
    o.in = s.in, o.out = s.out, o.kernel = s.kernel, o.stride = s.stride, o.alpha = c_.alpha,
    o.qk_dim = c_.qk_dim, o.bias = s.bias;
    return torch::nn::AnyModule(layers::ConvAttention(o));
  }
  // As the convolution it stands for; the content branch closed.
  void init(const models::Slot& s, torch::nn::Module& layer,
            const models::DenseInitFn& dense) const override {
    auto& ca = dynamic_cast<layers::ConvAttentionImpl&>(layer);
    const models::DenseInit d = dense(s);
    ca.weight.copy_(d.weight);
    if (ca.bias.defined() && d.bias.defined()) ca.bias.copy_(d.bias);
    ca.gate.zero_();
    ca.qk->weight.normal_(0.0, 0.02);
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>&) const override {
    for (const auto& name : c_.layers) {
      bool found = false;
      for (const auto* s : claimed) found = found || s->name == name;
      RECAST_CHECK(found, "config 'recast_tcnn': the model has no block convolution ", quote(name));
    }
  }

 private:
  layers::TcnnConfig c_;
};

// Gates and mean attention distance per head on the probe images, for models
// with ConvAttention layers.
class TcnnStatistics : public train::TrainHook {
 public:
  std::string name() const override { return "tcnn"; }
  nlohmann::json statistics(models::Model& model, const models::Batch& probe) override {
    const bool was_training = model.is_training();
    model.eval();  // BatchNorm statistics stay as they are
    const nlohmann::json stats = layers::conv_attention_stats(model, [&] { model.forward(probe); });
    if (was_training) model.train();
    return stats.is_null() ? nlohmann::json(nullptr) : nlohmann::json({{"layers", stats}});
  }
};

// Each ConvAttention's input on the probe, captured through the converted
// network (every layer before it reproduces the source, so the input is the
// source's to fp32 rounding).
std::map<std::string, at::Tensor> layer_inputs(models::Model& model, const models::Batch& probe,
                                               const std::vector<std::string>& names) {
  std::map<std::string, at::Tensor> inputs;
  std::vector<std::pair<std::string, layers::ConvAttentionImpl*>> layers;
  for (const auto& item : model.named_modules("", false)) {
    if (auto* ca = item.value()->as<layers::ConvAttention>()) layers.emplace_back(item.key(), ca);
  }
  for (auto& [name, ca] : layers) ca->capture_input = true;
  model.forward(probe);
  for (auto& [name, ca] : layers) {
    ca->capture_input = false;
    if (std::find(names.begin(), names.end(), name) != names.end()) inputs[name] = ca->captured_input;
    ca->captured_input = at::Tensor();
  }
  return inputs;
}

std::vector<LayerReport> measure_tcnn(models::Model& source, models::Model& converted,
                                      const models::Batch& probe);

class Tcnn : public Recast {
 public:
  std::string name() const override { return "tcnn"; }
  std::string summary() const override {
    return "convolutions -> gated positional self-attention, exactly equivalent at init (T-CNN); "
           "fine-tuning opens the content attention";
  }
  std::string config_key() const override { return kKey; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<TcnnFiller>(layers::TcnnConfig::parse(block));
  }
  std::vector<OptionSpec> convert_options() const override {
    using T = OptionSpec::Type;
    OptionSpec hard{"--hard", "hard", T::Flag,
                    "tcnn: hard (one-hot) positional attention, exact (the default)"};
    return {OptionSpec("--alpha", "alpha", T::Double,
                       "tcnn: soft positional attention with this locality strength")
                .range(0, 1e6, true),
            hard,
            OptionSpec("--qk-dim", "qk_dim", T::Int, "tcnn: query/key width per head (default max(16, C/K^2))")
                .range(0, 65536)};
  }
  std::vector<std::shared_ptr<train::TrainHook>> train_hooks(models::Model& model,
                                                              const nlohmann::json&) const override {
    for (const auto& item : model.named_modules("", false)) {
      if (item.value()->as<layers::ConvAttention>()) return {std::make_shared<TcnnStatistics>()};
    }
    return {};
  }

  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    if (source.config().contains(kKey)) {
      throw UsageError("recipe tcnn: the model is already converted (config has recast_tcnn)");
    }
    const std::vector<std::string> candidates = candidate_convs(source);
    if (source.task() != models::Task::ImageClassification || candidates.empty()) {
      throw UsageError(msg("recipe tcnn: ", source.arch(),
                           " has no block convolutions to convert (a ResNet has: resnet18 ... resnet152)"));
    }
    layers::TcnnConfig t;
    if (o.values.contains("alpha") && !o.values["alpha"].is_null()) {
      if (o.values.value("hard", false)) throw UsageError("--hard excludes --alpha");
      t.alpha = o.values["alpha"].get<double>();
      RECAST_CHECK(*t.alpha > 0, "--alpha: expected > 0, found ", *t.alpha);
    }
    t.qk_dim = o.values.value("qk_dim", int64_t{0});
    RECAST_CHECK(t.qk_dim >= 0, "--qk-dim: expected >= 0, found ", t.qk_dim);
    const auto chosen = select_modules(candidates, o.layers.empty() ? "^layer4\\." : o.layers);
    t.layers.insert(chosen.begin(), chosen.end());

    std::vector<std::string> fresh;
    models::ModelPtr model = rebuild_with(
        source, kKey, t.to_json(), o.seed,
        [](const std::string& name) {
          return name.find(".qk.") != std::string::npos || ends_with(name, ".gate") ||
                 ends_with(name, ".centers") || ends_with(name, ".alpha");
        },
        &fresh);

    Conversion c;
    c.model = model;
    const std::string what =
        t.alpha ? msg("conv -> gated positional self-attention (soft, alpha ", *t.alpha, ")")
                : std::string("conv -> gated positional self-attention (hard)");
    nlohmann::json logits_change;
    if (o.probe.pixel_values.defined()) {
      c.report = measure_tcnn(source, *model, o.probe);
      for (auto& r : c.report) r.replaced = what;
      torch::NoGradGuard no_grad;
      source.eval();
      model->eval();
      const at::Tensor before = source.forward(o.probe).to(at::kDouble);
      const at::Tensor after = model->forward(o.probe).to(at::kDouble);
      const double max_abs = (after - before).abs().max().item<double>();
      logits_change = {{"max_abs", max_abs},
                       {"relative", max_abs / before.abs().max().clamp_min(1e-30).item<double>()},
                       {"same_argmax", after.argmax(1).eq(before.argmax(1)).all().item<bool>()}};
    }
    c.manifest = {{"recipe", "tcnn"},
                  {"options", t.to_json()},
                  {"layers", chosen},
                  {"new_tensors", fresh.size()},
                  {"seed", o.seed},
                  {"logits_change", logits_change}};
    return c;
  }
};

RECAST_REGISTER_RECAST(Tcnn);

std::vector<LayerReport> measure_tcnn(models::Model& source, models::Model& converted,
                                      const models::Batch& probe) {
  torch::NoGradGuard no_grad;
  const bool training = converted.is_training();
  converted.eval();
  source.eval();
  std::map<std::string, torch::nn::Conv2dImpl*> convs;
  for (const auto& item : source.named_modules("", false)) {
    if (auto* conv = item.value()->as<torch::nn::Conv2d>()) convs[item.key()] = conv;
  }
  std::map<std::string, layers::ConvAttentionImpl*> attns;
  std::vector<std::string> names;
  for (const auto& item : converted.named_modules("", false)) {
    if (auto* ca = item.value()->as<layers::ConvAttention>()) {
      attns[item.key()] = ca;
      names.push_back(item.key());
    }
  }
  const auto inputs = layer_inputs(converted, probe, names);
  std::vector<LayerReport> out;
  for (const auto& name : names) {
    auto conv = convs.find(name);
    RECAST_CHECK(conv != convs.end(), "tcnn report: the source has no convolution ", quote(name));
    const at::Tensor& x = inputs.at(name);
    const at::Tensor ref = conv->second->forward(x).to(at::kDouble);
    layers::ConvAttentionImpl* ca = attns.at(name);
    // The explicit attention form where its [B, heads, Lq, Lk] maps fit in
    // about 1 GiB of fp32; the fast form otherwise.
    const int64_t h = x.size(2), w = x.size(3), pad = ca->options().kernel / 2;
    const int64_t lq = ca->out_size(h) * ca->out_size(w);
    const double maps = static_cast<double>(x.size(0) * ca->heads() * lq * (h + 2 * pad) * (w + 2 * pad));
    const bool explicit_form = maps < 2.6e8;
    const at::Tensor y = (explicit_form ? ca->forward_reference(x) : ca->forward(x)).to(at::kDouble);
    LayerReport r;
    r.module = name;
    r.max_abs_error = (y - ref).abs().max().item<double>();
    r.relative_error = r.max_abs_error / ref.abs().max().clamp_min(1e-30).item<double>();
    r.detail = explicit_form ? "explicit attention maps" : "fast form";
    out.push_back(r);
  }
  if (training) converted.train();
  return out;
}

}  // namespace
}  // namespace recast::recasts
