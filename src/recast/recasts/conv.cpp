// Recast conv (Tay et al. 2021, "Are pre-trained convolutions better than
// pre-trained transformers?"; the layers of Wu et al. 2019): the
// self-attention of selected layers becomes a convolution block (GLU input
// projection, lightweight / dynamic / dilated depthwise conv over time, the
// attention's own output projection) inside the unchanged Transformer block.
// Encoders convolve centred windows, decoders causal ones; cross-attention
// stays softmax. A converted layer drops its q, k, v projections and adds
// conv_glu.* and conv.* (layers/conv_mixer.h).
//
// Config block "recast_conv" (layers::ConvConfig): it claims the attention
// slots it names, in any family that can host a token mixer (Slot::mixable:
// GPT-2, Llama, T5).
//
// Conversion: the GLU starts as the attention's value projection (W1 = 2 W_V,
// W2 = 0, so g = x W_V exactly: sigmoid(0) = 1/2), grouped-query value heads
// repeated to the query heads; the kernels start uniform (softmax of zeros:
// each output is the mean of the values in its window); the output
// projection is the attention's. With --data and --transfer-steps, attention
// transfer then trains only the new layers so that each reproduces the
// softmax attention it replaced, on that layer's inputs in the source model
// (MSE of the outputs before the output projection, as recipe t2r does).

#include "recast/layers/conv_mixer.h"
#include "recast/recasts/recast.h"
#include "recast/train/trainer.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <regex>
#include <sstream>

namespace recast::recasts {
namespace {

constexpr const char* kKey = "recast_conv";
// The tensors a converted layer adds (and attention transfer trains).
constexpr const char* kNewTensors = R"(\.conv(_glu)?\.)";

bool new_tensor(const std::string& name) { return std::regex_search(name, std::regex(kNewTensors)); }

std::vector<std::pair<std::string, layers::ConvMixerImpl*>> conv_cores(const models::Model& m) {
  std::vector<std::pair<std::string, layers::ConvMixerImpl*>> out;
  for (const auto* b : slots_of(m, models::SlotKind::Attention, kKey)) {
    out.emplace_back(b->slot.name, dynamic_cast<layers::ConvMixerImpl*>(b->module.get()));
  }
  return out;
}

class ConvFiller : public models::SlotFiller {
 public:
  explicit ConvFiller(layers::ConvConfig c) : c_(std::move(c)) {}
  bool claims(const models::Slot& s) const override {
    return s.kind == models::SlotKind::Attention && s.mixable && c_.kernel_of(s.name) > 0;
  }
  bool mixes_input(const models::Slot& s) const override { return claims(s); }
  std::shared_ptr<layers::AttentionCoreImpl> build_attention(const models::Slot& s) const override {
    return std::make_shared<layers::ConvMixerImpl>(s.attention, c_, s.in, s.out, s.bias, c_.kernel_of(s.name));
  }
  // From scratch: W1 and W2 drawn as the family draws its value projection.
  void init(const models::Slot& s, torch::nn::Module& layer, const models::DenseInitFn& dense) const override {
    auto& m = dynamic_cast<layers::ConvMixerImpl&>(layer);
    models::Slot v = s;
    v.kind = models::SlotKind::Linear;
    v.name = s.value.slot.empty() ? s.name : s.value.slot;
    const models::DenseInit w1 = dense(v), w2 = dense(v);
    m.conv_glu->weight.copy_(at::cat({w1.weight, w2.weight}, 0));
    if (m.conv_glu->bias.defined()) m.conv_glu->bias.zero_();
    m.conv->reset_parameters();
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>& offered) const override {
    for (const auto& name : c_.modules) {
      bool found = false;
      for (const auto* s : claimed) found = found || s->name == name;
      if (found) continue;
      std::string example;
      for (const auto& s : offered) {
        if (s.kind != models::SlotKind::Attention) continue;
        if (s.name == name) {
          throw Error(msg("config 'recast_conv': ", quote(name),
                          " is an attention this family cannot replace with a convolution block"));
        }
        if (example.empty() && s.mixable) example = s.name;
      }
      throw Error(msg("config 'recast_conv': the model has no self-attention named ", quote(name),
                      example.empty() ? std::string(" (none of its attentions can be replaced)")
                                      : msg(" (they are named like ", quote(example), ")")));
    }
  }

 private:
  layers::ConvConfig c_;
};

// The source's softmax core of each converted layer, by module name.
std::map<std::string, layers::AttentionCoreImpl*> teacher_cores(const models::Model& source) {
  std::map<std::string, layers::AttentionCoreImpl*> out;
  for (const auto* b : slots_of(source, models::SlotKind::Attention)) {
    out[b->slot.name] = dynamic_cast<layers::AttentionCoreImpl*>(b->module.get());
  }
  return out;
}

// Runs the source on `inputs` and hands each converted layer the output of
// the softmax attention it replaced (its teacher), then runs the converted
// model with the layers comparing against it and passing it on, so each
// layer sees the source's inputs. Returns the sum of the layers' MSEs.
at::Tensor transfer_pass(models::Model& source, models::Model& model, const models::Batch& inputs) {
  const auto teachers = teacher_cores(source);
  const auto cores = conv_cores(model);
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, core] : cores) {
      layers::ConvMixerImpl* student = core;
      teachers.at(name)->observer = [student](const at::Tensor& y) { student->teacher = y.detach(); };
    }
    source.forward(inputs);
    for (const auto& [name, core] : cores) teachers.at(name)->observer = nullptr;
  }
  for (const auto& [name, core] : cores) core->probe.on = true;
  model.forward(inputs);
  at::Tensor sum;
  for (const auto& [name, core] : cores) {
    core->probe.on = false;
    core->teacher = at::Tensor();
    sum = sum.defined() ? sum + core->probe.mse : core->probe.mse;
  }
  RECAST_CHECK(sum.defined(), "attention transfer: the model has no conv layers");
  return sum;
}

class ConvTransfer : public train::Objective {
 public:
  explicit ConvTransfer(models::Model& source) : source_(source) {}
  at::Tensor loss(models::Model& model, const train::Example& ex) override {
    return transfer_pass(source_, model, ex.inputs);
  }

 private:
  models::Model& source_;
};

std::vector<int64_t> parse_kernels(const std::string& list) {
  std::vector<int64_t> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    int64_t k = 0;
    try {
      k = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || k < 1 || k > 4096) {
      throw UsageError(msg("--kernels ", quote(list), ": expected widths in [1, 4096] separated by commas, found ",
                           quote(item)));
    }
    out.push_back(k);
  }
  if (out.empty()) throw UsageError("--kernels: expected a list of widths like 3,7,15,31");
  return out;
}

class Conv : public Recast {
 public:
  std::string name() const override { return "conv"; }
  std::string summary() const override {
    return "self-attention -> lightweight / dynamic / dilated convolution blocks (Tay et al.); "
           "decodes with a constant-size window per layer";
  }
  std::string config_key() const override { return kKey; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<ConvFiller>(layers::ConvConfig::parse(block));
  }

  std::vector<OptionSpec> convert_options() const override {
    using T = OptionSpec::Type;
    return {OptionSpec("--conv", "conv", T::String, "conv: lightweight, dynamic or dilated (default lightweight)"),
            OptionSpec("--kernel", "kernel", T::Int, "conv: kernel width of every layer (default 31)")
                .range(1, 4096),
            OptionSpec("--kernels", "kernels", T::String,
                       "conv: one kernel width per converted layer, e.g. 3,7,15,31,31,31"),
            OptionSpec("--heads", "heads", T::Int, "conv: kernel heads (default: the attention's)")
                .range(1, 65536),
            OptionSpec("--dilation", "dilation", T::Int, "conv: dilation of kind dilated (default 2)")
                .range(1, 4096),
            OptionSpec("--normalize", "normalize", T::String,
                       "conv: softmax or none (kind dilated only; default softmax)"),
            OptionSpec("--weight-dropout", "weight_dropout", T::Double,
                       "conv: DropConnect on the kernels in training (default 0)")
                .range(0, 0.99),
            OptionSpec("--glu-init", "glu_init", T::String,
                       "conv: value (the GLU starts as the value projection; default) or random "
                       "(the family's fresh init, a baseline)"),
            OptionSpec("--transfer-steps", "transfer_steps", T::Int,
                       "conv: train the new layers to reproduce the attention first (default 0)")
                .range(0, 1e9),
            OptionSpec("--transfer-lr", "transfer_lr", T::Double,
                       "conv: attention transfer learning rate (default 1e-3)")
                .range(0, 10, true)};
  }

  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    if (source.config().contains(kKey)) {
      throw UsageError("recipe conv: the model is already converted (config has recast_conv)");
    }
    layers::ConvConfig cfg;
    cfg.kind = o.values.value("conv", std::string("lightweight"));
    if (cfg.kind != "lightweight" && cfg.kind != "dynamic" && cfg.kind != "dilated") {
      throw UsageError(msg("--conv ", quote(cfg.kind), ": expected lightweight, dynamic or dilated"));
    }
    cfg.heads = o.values.value("heads", int64_t{0});
    if (cfg.heads > 0 && cfg.kind == "dilated") {
      throw UsageError("--heads is for --conv lightweight or dynamic (dilated kernels are per channel)");
    }
    cfg.dilation = o.values.value("dilation", int64_t{cfg.kind == "dilated" ? 2 : 1});
    if (cfg.dilation != 1 && cfg.kind != "dilated") {
      throw UsageError(msg("--dilation is for --conv dilated, not ", cfg.kind));
    }
    cfg.normalize = o.values.value("normalize", std::string("softmax"));
    if (cfg.normalize != "softmax" && !(cfg.normalize == "none" && cfg.kind == "dilated")) {
      throw UsageError(msg("--normalize ", quote(cfg.normalize), ": expected softmax, or none with --conv dilated"));
    }
    cfg.weight_dropout = o.values.value("weight_dropout", 0.0);
    const int64_t steps = o.values.value("transfer_steps", int64_t{0});
    const double lr = o.values.value("transfer_lr", 1e-3);
    if (steps > 0 && !o.train_data) {
      throw UsageError("--transfer-steps needs --data (the text to match the attention on)");
    }
    const std::string glu_init = o.values.value("glu_init", std::string("value"));
    if (glu_init != "value" && glu_init != "random") {
      throw UsageError(msg("--glu-init ", quote(glu_init), ": expected value or random"));
    }
    if (o.values.contains("kernel") && o.values.contains("kernels")) {
      throw UsageError("--kernel and --kernels: give one");
    }

    // The self-attentions a convolution block can replace.
    std::vector<std::string> names;
    std::map<std::string, const models::BuiltSlot*> slot_of;
    for (const auto* b : slots_of(source, models::SlotKind::Attention)) {
      if (!b->slot.mixable) continue;
      names.push_back(b->slot.name);
      slot_of[b->slot.name] = b;
    }
    if (names.empty()) {
      throw UsageError(msg("recipe conv: ", source.arch(), " has no self-attention a convolution block can replace"));
    }
    cfg.modules = select_modules(names, o.layers);
    if (o.values.contains("kernels")) {
      cfg.kernels = parse_kernels(o.values["kernels"].get<std::string>());
      if (cfg.kernels.size() != cfg.modules.size()) {
        throw UsageError(msg("--kernels: ", cfg.kernels.size(), " widths for the ", cfg.modules.size(),
                             " converted layers"));
      }
    } else {
      cfg.kernels.assign(cfg.modules.size(), o.values.value("kernel", int64_t{31}));
    }
    for (const auto& name : cfg.modules) {
      const auto& s = slot_of.at(name)->slot;
      if (cfg.heads > 0 && cfg.kind != "dilated" && s.out % cfg.heads != 0) {
        throw UsageError(msg("--heads ", cfg.heads, ": ", quote(name), "'s ", s.out,
                             " channels do not split into that many kernels"));
      }
    }

    // The converted layers' q, k, v projections are dropped.
    std::vector<std::string> dropped_prefixes;
    for (const auto& name : cfg.modules) {
      const auto& s = slot_of.at(name)->slot;
      for (const auto* src : {&s.query, &s.key, &s.value}) {
        if (!src->slot.empty()) dropped_prefixes.push_back(src->slot + ".");
      }
    }
    std::vector<std::string> fresh, dropped;
    models::ModelPtr model = rebuild_with(
        source, kKey, cfg.to_json(), o.seed,
        new_tensor, &fresh,
        [&](const std::string& n) {
          for (const auto& p : dropped_prefixes) {
            if (n.rfind(p, 0) == 0) return true;
          }
          return false;
        },
        &dropped);
    if (glu_init == "value") {
      init_from_attention(source, *model, slot_of);
    } else {
      // The baseline: the new layers as the family draws them from scratch.
      at::manual_seed(o.seed);
      models::ModelPtr scratch = models::create_model(model->arch(), model->config());
      scratch->init_weights();
      torch::NoGradGuard no_grad;
      auto mine = model->named_parameters(true);
      for (const auto& p : scratch->named_parameters(true)) {
        if (new_tensor(p.key())) mine[p.key()].copy_(p.value());
      }
    }

    Conversion c;
    c.model = model;
    c.report = measure(source, *model, o.probe, o.data);
    c.manifest = {{"recipe", "conv"},
                  {"options", cfg.to_json()},
                  {"layers", cfg.modules},
                  {"new_tensors", fresh.size()},
                  {"dropped_tensors", dropped},
                  {"init", glu_init == "value" ? "conv_glu: W1 = 2 W_V (b1 = 2 b_V), W2 = 0; kernels uniform"
                                               : "random: the family's init from scratch"},
                  {"seed", o.seed}};
    if (steps > 0) {
      std::vector<LayerReport> after;
      c.extra["attention_transfer"] = transfer(source, *model, o, steps, lr, &after);
      c.later.emplace_back(msg("after ", steps, " transfer steps"), after);
    }
    return c;
  }

  // Each conv layer's relative error against the softmax attention it
  // replaced (outputs before the output projection), on the source's inputs.
  static std::vector<LayerReport> measure(models::Model& source, models::Model& model,
                                          const models::Batch& probe, const std::string& data) {
    std::vector<LayerReport> out;
    if (!probe.input_ids.defined()) return out;
    torch::NoGradGuard no_grad;
    const bool training = model.is_training();
    source.eval();
    model.eval();
    transfer_pass(source, model, probe);
    for (const auto& [name, core] : conv_cores(model)) {
      out.push_back({name, "softmax attention -> " + core->describe(), core->probe.relative, -1,
                     data.empty() ? "random tokens" : data});
    }
    if (training) model.train();
    return out;
  }

 private:
  // conv_glu from the attention's value projection; uniform kernels.
  static void init_from_attention(const models::Model& source, models::Model& model,
                                  const std::map<std::string, const models::BuiltSlot*>& slot_of) {
    torch::NoGradGuard no_grad;
    std::map<std::string, const models::BuiltSlot*> dense;
    for (const auto& b : source.slots().built()) {
      if (b.slot.kind == models::SlotKind::Linear) dense[b.slot.name] = &b;
    }
    for (auto& [name, core] : conv_cores(model)) {
      const models::Slot& s = slot_of.at(name)->slot;
      auto it = dense.find(s.value.slot);
      if (it == dense.end() || !it->second->recast.empty()) {
        throw UsageError(msg("recipe conv: ", quote(name), "'s value projection ", quote(s.value.slot),
                             " is not a dense layer (convert the attention before other recasts)"));
      }
      auto params = it->second->module->named_parameters(false);
      at::Tensor w = params["weight"];
      if (it->second->slot.transposed) w = w.t();  // [out, in]
      const int64_t kv = s.attention.kv_heads, d = s.attention.head_dim, heads = s.attention.heads;
      auto value_rows = [&](const at::Tensor& t) {  // rows of the value heads, repeated to the query heads
        return t.narrow(0, s.value.row, kv * d).reshape({kv, d, -1}).repeat_interleave(heads / kv, 0)
            .reshape({heads * d, -1});
      };
      const at::Tensor wv = value_rows(w);
      at::Tensor& glu_w = core->conv_glu->weight;
      glu_w.zero_();
      glu_w.narrow(0, 0, heads * d).copy_(wv * 2);
      if (core->conv_glu->bias.defined()) {
        at::Tensor& glu_b = core->conv_glu->bias;
        glu_b.zero_();
        if (params.contains("bias")) {
          glu_b.narrow(0, 0, heads * d).copy_(value_rows(params["bias"].unsqueeze(1)).view({heads * d}) * 2);
        }
      }
      // Softmax-normalised kernels of zeros are uniform; an unnormalised one is 1/K.
      core->conv->weight.zero_();
      if (core->conv->bias.defined()) core->conv->bias.zero_();
      if (model.config().at(kKey).value("normalize", "softmax") == "none") {
        core->conv->weight.fill_(1.0 / static_cast<double>(core->kernel()));
      }
    }
  }

  // Trains only the conv layers so that each reproduces the softmax attention
  // it replaced, on the source's own inputs.
  static nlohmann::json transfer(models::Model& source, models::Model& model, const RecipeOptions& o,
                                 int64_t steps, double lr, std::vector<LayerReport>* after) {
    source.eval();
    nlohmann::json section = run_attention_transfer(model, o, steps, lr, /*clip=*/1.0, kNewTensors,
                                                    std::make_shared<ConvTransfer>(source));
    *after = measure(source, model, o.probe, o.data);
    section["error_after"] = report_json(*after);
    return section;
  }
};

RECAST_REGISTER_RECAST(Conv);

}  // namespace
}  // namespace recast::recasts
