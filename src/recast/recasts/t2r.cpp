// Recast t2r (Kasai et al. 2021): the softmax attention of selected decoder
// layers becomes causal linear attention with a learned feature map; every
// pretrained weight is kept, the feature maps are new (initialised as the
// official code does: torch.nn.Linear's uniform init; see layers/linear_attention.h).
// Layers left out stay softmax (a hybrid).
//
// Config block "recast_t2r": {"feature_map", "feature_dim", "eps", "chunk",
// "layers": [decoder layer indices]}; it claims the attention slots of those
// layers (any family that builds its attention through Slots::attention).
// Attention transfer (--transfer-steps) is an ordinary training run of the
// feature maps with the AttentionTransfer objective.

#include "recast/layers/linear_attention.h"
#include "recast/recasts/recast.h"
#include "recast/train/trainer.h"

#include "recast/core/error.h"
#include "recast/io/json_strict.h"

#include <torch/torch.h>


namespace recast::recasts {
namespace {

constexpr const char* kKey = "recast_t2r";

// The T2R cores of a model, by their attention's module name.
std::vector<std::pair<std::string, layers::T2RAttentionImpl*>> t2r_cores(const models::Model& m) {
  std::vector<std::pair<std::string, layers::T2RAttentionImpl*>> out;
  for (const auto* b : slots_of(m, models::SlotKind::Attention, kKey)) {
    out.emplace_back(b->slot.name, dynamic_cast<layers::T2RAttentionImpl*>(b->module.get()));
  }
  return out;
}

void set_transfer(const models::Model& m, bool on) {
  for (auto& [name, core] : t2r_cores(m)) core->probe.on = on;
}

class T2RFiller : public models::SlotFiller {
 public:
  explicit T2RFiller(layers::T2RConfig c) : c_(std::move(c)) {}
  bool claims(const models::Slot& s) const override {
    return s.kind == models::SlotKind::Attention && c_.linear(s.attention.layer);
  }
  std::shared_ptr<layers::AttentionCoreImpl> build_attention(const models::Slot& s) const override {
    return std::make_shared<layers::T2RAttentionImpl>(s.attention, c_);
  }
  void init(const models::Slot&, torch::nn::Module& layer, const models::DenseInitFn&) const override {
    dynamic_cast<layers::T2RAttentionImpl&>(layer).feature_map->reset_parameters();
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>& offered) const override {
    int64_t attention = 0;
    for (const auto& s : offered) attention += s.kind == models::SlotKind::Attention;
    for (int64_t l : c_.layers) {
      bool found = false;
      for (const auto* s : claimed) found = found || s->attention.layer == l;
      RECAST_CHECK(found, "config 'recast_t2r': layer ", l, " out of range for the model's ",
                   attention, " attention layers");
    }
  }

 private:
  layers::T2RConfig c_;
};

// Attention transfer: the sum over T2R layers of the MSE between each
// layer's linear attention and the softmax attention it replaces, each layer
// fed the softmax model's inputs (the layers pass the softmax output on).
class AttentionTransfer : public train::Objective {
 public:
  at::Tensor loss(models::Model& model, const train::Example& ex) override {
    set_transfer(model, true);
    model.forward(ex.inputs);
    set_transfer(model, false);
    at::Tensor sum;
    for (auto& [name, core] : t2r_cores(model)) {
      sum = sum.defined() ? sum + core->probe.mse : core->probe.mse;
    }
    RECAST_CHECK(sum.defined(), "attention transfer: the model has no T2R layers");
    return sum;
  }
};

class T2R : public Recast {
 public:
  std::string name() const override { return "t2r"; }
  std::string summary() const override {
    return "softmax attention -> causal linear attention with a learned feature map (T2R); "
           "generates as an RNN with constant memory";
  }
  std::string config_key() const override { return kKey; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<T2RFiller>(layers::T2RConfig::parse(block));
  }

  std::vector<OptionSpec> convert_options() const override {
    using T = OptionSpec::Type;
    return {OptionSpec("--feature-map", "feature_map", T::String, "t2r: t2r, elu1 or hedgehog (default t2r)"),
            OptionSpec("--feature-dim", "feature_dim", T::Int, "t2r: features per head (default 64)")
                .range(1, 65536),
            OptionSpec("--eps", "eps", T::Double, "t2r: normaliser floor (default 0.01, T2R's)")
                .range(0, 1, true),
            OptionSpec("--transfer-steps", "transfer_steps", T::Int,
                       "t2r: train the feature maps to match softmax attention first (default 0)")
                .range(0, 1e9),
            OptionSpec("--transfer-lr", "transfer_lr", T::Double,
                       "t2r: attention transfer learning rate (1e-2)")
                .range(0, 10, true)};
  }

  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    if (source.task() != models::Task::CausalLM) {
      throw UsageError(msg("recipe t2r: the model is not a causal language model (", source.arch(), ")"));
    }
    if (source.config().contains(kKey)) {
      throw UsageError("recipe t2r: the model is already converted (config has recast_t2r)");
    }
    layers::T2RConfig t;
    t.feature_map = o.values.value("feature_map", std::string("t2r"));
    t.features = o.values.value("feature_dim", int64_t{64});
    t.eps = o.values.value("eps", 1e-2);
    t.chunk = o.values.value("chunk", int64_t{64});
    const int64_t steps = o.values.value("transfer_steps", int64_t{0});
    const double lr = o.values.value("transfer_lr", 1e-2);
    layers::feature_map_registry().get(t.feature_map);
    RECAST_CHECK(t.eps > 0, "--eps: expected > 0, found ", t.eps);
    if (steps < 0) throw UsageError(msg("--transfer-steps: expected >= 0, found ", steps));
    if (steps > 0 && !o.train_data) {
      throw UsageError("--transfer-steps needs --data (the text to match the attention on)");
    }
    if (!(lr > 0)) throw UsageError(msg("--transfer-lr: expected > 0, found ", lr));
    std::vector<std::string> names;
    std::map<std::string, int64_t> layer_of;
    for (const auto* b : slots_of(source, models::SlotKind::Attention)) {
      names.push_back(b->slot.name);
      layer_of[b->slot.name] = b->slot.attention.layer;
    }
    if (names.empty()) {
      throw UsageError(msg("recipe t2r: ", source.arch(), " has no softmax attention layers"));
    }
    const auto chosen = select_modules(names, o.layers);
    for (const auto& name : chosen) t.layers.insert(layer_of.at(name));
    std::vector<std::string> fresh;
    models::ModelPtr model = rebuild_with(
        source, kKey, t.to_json(), o.seed,
        [](const std::string& n) { return n.find(".feature_map.") != std::string::npos; }, &fresh);

    Conversion c;
    c.model = model;
    c.report = measure(*model, o.probe);
    const std::string what = msg("softmax attention -> ", t2r_cores(*model).front().second->describe());
    for (auto& r : c.report) r.replaced = what;
    c.manifest = {{"recipe", "t2r"},
                  {"options", t.to_json()},
                  {"layers", chosen},
                  {"new_tensors", fresh.size()},
                  {"seed", o.seed}};
    if (steps > 0) {
      std::vector<LayerReport> after;
      c.extra["attention_transfer"] = transfer(*model, o, steps, lr, &after);
      c.later.emplace_back(msg("after ", steps, " transfer steps"), after);
    }
    return c;
  }

  // The relative error of each linear-attention layer against the softmax
  // attention it replaced, each layer fed the softmax model's inputs.
  static std::vector<LayerReport> measure(models::Model& model, const models::Batch& probe) {
    std::vector<LayerReport> out;
    if (!probe.input_ids.defined()) return out;
    torch::NoGradGuard no_grad;
    const bool training = model.is_training();
    model.eval();
    set_transfer(model, true);
    model.forward(probe);
    set_transfer(model, false);
    for (const auto& [name, core] : t2r_cores(model)) {
      out.push_back({name, "", core->probe.relative, -1, ""});
    }
    if (training) model.train();
    return out;
  }

 private:
  // Trains only the feature maps so that each linear layer reproduces the
  // softmax attention it replaced, on the source's own inputs.
  static nlohmann::json transfer(models::Model& model, const RecipeOptions& o, int64_t steps,
                                 double lr, std::vector<LayerReport>* after) {
    bool any = false;
    for (const auto& p : model.named_parameters(true)) {
      any = any || p.key().find(".feature_map.") != std::string::npos;
    }
    if (!any) throw UsageError("--transfer-steps: the feature maps have no parameters (elu1)");
    nlohmann::json section = run_attention_transfer(model, o, steps, lr, /*clip=*/0, R"(\.feature_map\.)",
                                                    std::make_shared<AttentionTransfer>());
    *after = measure(model, o.probe);
    section["error_after"] = report_json(*after);
    return section;
  }
};

RECAST_REGISTER_RECAST(T2R);

}  // namespace
}  // namespace recast::recasts
