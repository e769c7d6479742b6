// Recipe tcnn (d'Ascoli et al. 2021): selected KxK convolutions of a ResNet's
// blocks become ConvAttention (layers/conv_attention.h) built from their
// weights: K^2 heads, head i*K+j <-> tap (i, j), content branch closed (gate
// 0), so the network computes what it computed before. BatchNorm after each
// convolution stays as it is. Default: the 3x3 convolutions of the last stage.

#include "recast/layers/conv_attention.h"
#include "recast/recipes/recipe.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>

namespace recast::recipes {
namespace {

// Block convolutions with an odd kernel > 1 ("layer4.0.conv2", ...).
std::vector<std::string> candidate_convs(models::Model& m) {
  std::vector<std::string> out;
  const std::regex block_conv(R"(^layer\d+\.\d+\.conv\d$)");
  for (const auto& item : m.named_modules("", false)) {
    auto* conv = item.value()->as<torch::nn::Conv2d>();
    if (conv == nullptr || !std::regex_search(item.key(), block_conv)) continue;
    const auto k = (*conv->options.kernel_size())[0];
    if (k > 1 && k % 2 == 1 && conv->options.groups() == 1) out.push_back(item.key());
  }
  return out;
}

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

Conversion convert(models::Model& source, const RecipeOptions& o) {
  if (source.task() != models::Task::ImageClassification || source.arch().rfind("resnet", 0) != 0) {
    throw UsageError(msg("recipe tcnn: ", source.arch(), " is not a ResNet (resnet18 ... resnet152)"));
  }
  if (source.config().contains("recast_tcnn")) {
    throw UsageError("recipe tcnn: the model is already converted (config has recast_tcnn)");
  }
  layers::TcnnConfig t;
  if (o.values.contains("alpha") && !o.values["alpha"].is_null()) {
    t.alpha = o.values["alpha"].get<double>();
    RECAST_CHECK(*t.alpha > 0, "--alpha: expected > 0, found ", *t.alpha);
  }
  t.qk_dim = o.values.value("qk_dim", int64_t{0});
  RECAST_CHECK(t.qk_dim >= 0, "--qk-dim: expected >= 0, found ", t.qk_dim);
  const auto chosen = select_modules(candidate_convs(source), o.layers.empty() ? "^layer4\\." : o.layers);
  t.layers.insert(chosen.begin(), chosen.end());

  nlohmann::json config = source.config();
  config["recast_tcnn"] = t.to_json();
  at::manual_seed(o.seed);  // the query/key projections' initialisation
  models::ModelPtr model = models::create_model(source.arch(), config);
  const std::vector<std::string> fresh = copy_matching_weights(source, *model);
  for (const auto& name : fresh) {
    const bool expected = name.find(".qk.") != std::string::npos || ends_with(name, ".gate") ||
                          ends_with(name, ".centers") || ends_with(name, ".alpha");
    RECAST_CHECK(expected, "recipe tcnn: unexpected new tensor ", quote(name));
  }
  model->set_metadata(source.metadata());
  model->to(source.device());

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

}  // namespace

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

void register_tcnn(Registry<Recipe>& r) {
  r.add("tcnn",
        "convolutions -> gated positional self-attention, exactly equivalent at init (T-CNN); "
        "fine-tuning opens the content attention",
        convert);
}

}  // namespace recast::recipes
