// Recast refiner (Zhou et al. 2021): the softmax maps of a ViT's attention
// are refined (expansion across heads, a depthwise KxK conv over each map,
// reduction; layers/refiner.h) before they weigh the values. Every pretrained
// weight is kept; the refiner's are new, and its per-head gate starts at 0, so
// the converted ViT computes exactly what it computed before.
//
// Config block "recast_refiner": {"layers": [block indices], "expansion",
// "kernel", "norm"}; it claims the bidirectional attention slots of those
// blocks (any family that builds its attention through Slots::attention: the
// ViT). The same block in a config built from scratch (`pretrain --arch
// vit_tiny --set recast_refiner=...`) is Refined-ViT without the shared maps.

#include "recast/layers/refiner.h"
#include "recast/recasts/recast.h"

#include "recast/core/error.h"
#include "recast/train/hooks.h"

#include <torch/torch.h>

#include <map>
#include <optional>
#include <set>

namespace recast::recasts {
namespace {

constexpr const char* kKey = "recast_refiner";

class RefinerFiller : public models::SlotFiller {
 public:
  explicit RefinerFiller(layers::RefinerConfig c) : c_(std::move(c)), state_(std::make_shared<State>()) {
    if (!c_.shared) return;
    for (int64_t l : c_.layers) {
      if (l % 2 == 1) takers_.insert(l);
    }
  }
  bool claims(const models::Slot& s) const override {
    if (s.kind == models::SlotKind::Linear) return state_->value_rows.count(s.name) != 0;
    return s.kind == models::SlotKind::Attention &&
           (c_.layers.count(s.attention.layer) != 0 || takers_.count(s.attention.layer + 1) != 0);
  }
  // A taker's projection: only its values.
  torch::nn::AnyModule build(const models::Slot& s) const override {
    const int64_t lead = state_->value_rows.at(s.name);
    RECAST_CHECK(lead < s.out, "config 'recast_refiner': ", quote(s.name), " has ", s.out,
                 " outputs, its values start at ", lead);
    return torch::nn::AnyModule(layers::ValueProjection(s.in, s.out - lead, lead, s.bias));
  }
  std::shared_ptr<layers::AttentionCoreImpl> build_attention(const models::Slot& s) const override {
    RECAST_CHECK(!s.attention.causal, "config 'recast_refiner': ", quote(s.name),
                 " is causal attention; Refiner refines a ViT's bidirectional maps");
    const int64_t l = s.attention.layer;
    std::optional<layers::RefinerOptions> o;
    if (c_.layers.count(l) != 0) o = c_.options(s.attention.heads);
    std::shared_ptr<layers::MapHandoff> give, take;
    if (takers_.count(l + 1) != 0) give = handoff(l);
    if (takers_.count(l) != 0) {
      take = handoff(l - 1);
      state_->value_rows[s.value.slot] = s.value.row;
    }
    return std::make_shared<layers::RefinedAttentionImpl>(s.attention, o, give, take);
  }
  // New layers: torch.nn's conv / BN init, the gate closed; a taker's values
  // from the family's init of its qkv projection's value rows.
  void init(const models::Slot& s, torch::nn::Module& layer, const models::DenseInitFn& dense) const override {
    if (auto* v = layer.as<layers::ValueProjection>()) {
      const models::DenseInit d = dense(s);
      v->weight.copy_(d.weight.narrow(0, v->lead(), v->weight.size(0)));
      if (v->bias.defined() && d.bias.defined()) v->bias.copy_(d.bias.narrow(0, v->lead(), v->bias.size(0)));
      return;
    }
    auto& core = dynamic_cast<layers::RefinedAttentionImpl&>(layer);
    if (core.refiner) core.refiner->gate.zero_();
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>& offered) const override {
    int64_t attention = 0;
    for (const auto& s : offered) attention += s.kind == models::SlotKind::Attention;
    for (int64_t l : c_.layers) {
      bool found = false;
      for (const auto* s : claimed) found = found || (s->kind == models::SlotKind::Attention && s->attention.layer == l);
      RECAST_CHECK(found, "config 'recast_refiner': block ", l, " out of range for the model's ",
                   attention, " attention layers");
    }
    for (const auto& [slot, row] : state_->value_rows) {
      bool found = false;
      for (const auto* s : claimed) found = found || s->name == slot;
      RECAST_CHECK(found, "config 'recast_refiner': 'shared' needs the value projection ", quote(slot),
                   " built after its attention; the model builds it before");
    }
  }

 private:
  // One hand-off per giving block, and where each taker's values start in
  // its qkv projection (known once its attention is built: the family builds
  // an attention slot before the projections that feed it).
  struct State {
    std::map<int64_t, std::shared_ptr<layers::MapHandoff>> handoffs;
    std::map<std::string, int64_t> value_rows;
  };
  std::shared_ptr<layers::MapHandoff> handoff(int64_t giver) const {
    auto& h = state_->handoffs[giver];
    if (!h) h = std::make_shared<layers::MapHandoff>();
    return h;
  }
  layers::RefinerConfig c_;
  std::set<int64_t> takers_;
  std::shared_ptr<State> state_;
};

// Per refined attention, on the probe images: the gate, and the entropy and
// mean attention distance of the raw and the refined maps (layers/refiner.h).
class RefinerStatistics : public train::TrainHook {
 public:
  std::string name() const override { return "refiner"; }
  nlohmann::json statistics(models::Model& model, const models::Batch& probe) override {
    const bool was_training = model.is_training();
    model.eval();  // BatchNorm statistics stay as they are
    const nlohmann::json stats = layers::refiner_stats(model, [&] { model.forward(probe); });
    if (was_training) model.train();
    return stats.is_null() ? nlohmann::json(nullptr) : nlohmann::json({{"layers", stats}});
  }
};

// What `rec` recorded under `name`, in double.
at::Tensor recorded(const models::Recorder& rec, const std::string& name) {
  for (const auto& [key, t] : rec.tensors()) {
    if (key == name) return t.to(at::kDouble);
  }
  throw Error(msg("refiner report: no output recorded for ", quote(name)));
}

// Each block's output on the probe, source against converted: the block
// whose attention was refined, and every block after it, should not move.
std::vector<LayerReport> measure(models::Model& source, models::Model& converted,
                                 const models::Batch& probe, const std::vector<std::string>& chosen,
                                 const std::map<std::string, int64_t>& added) {
  torch::NoGradGuard no_grad;
  const bool s_training = source.is_training(), c_training = converted.is_training();
  source.eval();
  converted.eval();
  models::Recorder before(R"(^blocks\.[0-9]+$)"), after(R"(^blocks\.[0-9]+$)");
  source.forward(probe, &before);
  converted.forward(probe, &after);
  if (s_training) source.train();
  if (c_training) converted.train();
  std::vector<LayerReport> out;
  for (const auto& attn : chosen) {
    const std::string block = attn.substr(0, attn.rfind('.'));  // "blocks.3.attn" -> "blocks.3"
    const at::Tensor ref = recorded(before, block), got = recorded(after, block);
    LayerReport r;
    r.module = attn;
    r.max_abs_error = (got - ref).abs().max().item<double>();
    r.relative_error = r.max_abs_error / ref.abs().max().clamp_min(1e-30).item<double>();
    r.detail = msg("the block's output; +", added.count(attn) ? added.at(attn) : 0, " parameters");
    out.push_back(r);
  }
  return out;
}

class Refiner : public Recast {
 public:
  std::string name() const override { return "refiner"; }
  std::string summary() const override {
    return "a ViT's attention maps refined (expansion across heads, local convolution over each "
           "map), exactly the ViT at insertion (Refiner)";
  }
  std::string config_key() const override { return kKey; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<RefinerFiller>(layers::RefinerConfig::parse(block));
  }
  std::vector<OptionSpec> convert_options() const override {
    using T = OptionSpec::Type;
    return {OptionSpec("--expansion", "expansion", T::Int, "refiner: maps per head after expansion (default 3)")
                .range(1, 64),
            OptionSpec("--kernel", "kernel", T::Int, "refiner: the local convolution's size, odd (default 3)")
                .range(1, 31),
            OptionSpec("--map-norm", "norm", T::String,
                       "refiner: bn (BatchNorm + ReLU6, as released; the default) or none")};
  }

  std::vector<std::shared_ptr<train::TrainHook>> train_hooks(models::Model& model,
                                                              const nlohmann::json&) const override {
    for (const auto& item : model.named_modules("", false)) {
      if (item.value()->as<layers::MapRefiner>()) return {std::make_shared<RefinerStatistics>()};
    }
    return {};
  }

  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    if (source.config().contains(kKey)) {
      throw UsageError("recipe refiner: the model is already converted (config has recast_refiner)");
    }
    std::vector<std::string> names;
    std::map<std::string, int64_t> layer_of;
    for (const auto* b : slots_of(source, models::SlotKind::Attention)) {
      if (b->slot.attention.causal) continue;
      names.push_back(b->slot.name);
      layer_of[b->slot.name] = b->slot.attention.layer;
    }
    if (source.task() != models::Task::ImageClassification || names.empty()) {
      throw UsageError(msg("recipe refiner: ", source.arch(),
                           " has no vision-transformer attention to refine (a ViT has: vit_tiny ... vit_base)"));
    }
    layers::RefinerConfig t;
    t.expansion = o.values.value("expansion", int64_t{3});
    t.kernel = o.values.value("kernel", int64_t{3});
    if (t.kernel % 2 == 0) throw UsageError(msg("--kernel: expected an odd size, found ", t.kernel));
    const std::string norm = o.values.value("norm", std::string("bn"));
    if (norm != "bn" && norm != "none") {
      throw UsageError(msg("--map-norm: expected bn or none, found ", quote(norm)));
    }
    t.batch_norm = norm == "bn";
    const auto chosen = select_modules(names, o.layers);
    for (const auto& name : chosen) t.layers.insert(layer_of.at(name));

    std::vector<std::string> fresh;
    models::ModelPtr model = rebuild_with(
        source, kKey, t.to_json(), o.seed,
        [](const std::string& n) { return n.find(".refiner.") != std::string::npos; }, &fresh);
    // Parameters added, per attention (the BN running statistics are buffers).
    std::map<std::string, int64_t> added;
    int64_t total = 0;
    for (const auto& p : model->named_parameters()) {
      const size_t at = p.key().find(".refiner.");
      if (at == std::string::npos) continue;
      added[p.key().substr(0, at)] += p.value().numel();
      total += p.value().numel();
    }

    Conversion c;
    c.model = model;
    nlohmann::json logits_change;
    if (o.probe.pixel_values.defined()) {
      c.report = measure(source, *model, o.probe, chosen, added);
      const std::string what = msg("softmax maps -> refined (expansion ", t.expansion, ", kernel ",
                                   t.kernel, t.batch_norm ? ", BN + ReLU6)" : ", no norm)");
      for (auto& r : c.report) r.replaced = what;
      logits_change = output_change(source, *model, o.probe);
    }
    c.manifest = {{"recipe", "refiner"},   {"options", t.to_json()},
                  {"layers", chosen},      {"new_tensors", fresh.size()},
                  {"parameters_added", total}, {"seed", o.seed},
                  {"logits_change", logits_change}};
    return c;
  }
};

RECAST_REGISTER_RECAST(Refiner);

}  // namespace
}  // namespace recast::recasts
