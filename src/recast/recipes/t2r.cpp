// Recipe t2r (Kasai et al. 2021): the softmax attention of selected decoder
// layers becomes causal linear attention with a learned feature map; every
// pretrained weight is kept, the feature maps are new (initialised as the
// official code does: torch.nn.Linear's uniform init; see layers/linear_attention.h).
// Layers left out stay softmax (a hybrid).

#include "recast/layers/linear_attention.h"
#include "recast/recipes/recipe.h"

#include "recast/core/error.h"

#include <torch/torch.h>

namespace recast::recipes {
namespace {

// The attention modules of a decoder, by checkpoint name, with their layer index.
std::vector<std::pair<std::string, int64_t>> attention_modules(const models::Model& m) {
  std::vector<std::pair<std::string, int64_t>> out;
  int64_t layers = 0;
  std::string prefix, suffix;
  if (m.arch() == "gpt2") {
    layers = models::cfg_int(m.config(), "n_layer", 12);
    prefix = "transformer.h.", suffix = ".attn";
  } else if (m.arch() == "llama") {
    layers = models::cfg_int(m.config(), "num_hidden_layers", 32);
    prefix = "model.layers.", suffix = ".self_attn";
  } else {
    throw UsageError(msg("recipe t2r: ", m.arch(), " is not a decoder language model (gpt2, llama)"));
  }
  for (int64_t i = 0; i < layers; ++i) out.emplace_back(msg(prefix, i, suffix), i);
  return out;
}

Conversion convert(models::Model& source, const RecipeOptions& o) {
  if (source.task() != models::Task::CausalLM) {
    throw UsageError(msg("recipe t2r: the model is not a causal language model (", source.arch(), ")"));
  }
  if (source.config().contains("recast_t2r")) {
    throw UsageError("recipe t2r: the model is already converted (config has recast_t2r)");
  }
  layers::T2RConfig t;
  t.feature_map = o.values.value("feature_map", std::string("t2r"));
  t.features = o.values.value("feature_dim", int64_t{64});
  t.eps = o.values.value("eps", 1e-2);
  t.chunk = o.values.value("chunk", int64_t{64});
  layers::feature_map_registry().get(t.feature_map);
  RECAST_CHECK(t.eps > 0, "--eps: expected > 0, found ", t.eps);
  const auto modules = attention_modules(source);
  std::vector<std::string> names;
  for (const auto& m : modules) names.push_back(m.first);
  const auto chosen = select_modules(names, o.layers);
  for (const auto& m : modules) {
    if (std::find(chosen.begin(), chosen.end(), m.first) != chosen.end()) t.layers.insert(m.second);
  }
  nlohmann::json config = source.config();
  config["recast_t2r"] = t.to_json();
  at::manual_seed(o.seed);  // the feature maps' initialisation
  models::ModelPtr model = models::create_model(source.arch(), config);
  const std::vector<std::string> fresh = copy_matching_weights(source, *model);
  for (const auto& name : fresh) {
    RECAST_CHECK(name.find(".feature_map.") != std::string::npos,
                 "recipe t2r: unexpected new tensor ", quote(name));
  }
  model->set_metadata(source.metadata());
  model->to(source.device());

  Conversion c;
  c.model = model;
  c.report = measure_t2r(*model, o.probe);
  const std::string what =
      msg("softmax attention -> ", t.feature_map, " linear attention (",
          t.feature_map == "elu1" ? std::string("head_dim") : std::to_string(t.features),
          " features, eps ", t.eps, ")");
  for (auto& r : c.report) r.replaced = what;
  c.manifest = {{"recipe", "t2r"},
                {"options", t.to_json()},
                {"layers", chosen},
                {"new_tensors", fresh.size()},
                {"seed", o.seed}};
  return c;
}

}  // namespace

std::vector<LayerReport> measure_t2r(models::Model& model, const models::Batch& probe) {
  std::vector<LayerReport> out;
  if (!probe.input_ids.defined()) return out;
  torch::NoGradGuard no_grad;
  const bool training = model.is_training();
  model.eval();
  model.set_attention_transfer(true);
  model.forward(probe);
  for (const auto& e : model.attention_transfer_errors()) out.push_back({e.module, "", e.relative, -1, ""});
  model.set_attention_transfer(false);
  if (training) model.train();
  return out;
}

void register_t2r(Registry<Recipe>& r) {
  r.add("t2r",
        "softmax attention -> causal linear attention with a learned feature map (T2R); "
        "generates as an RNN with constant memory",
        convert);
}

}  // namespace recast::recipes
