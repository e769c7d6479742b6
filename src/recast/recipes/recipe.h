#pragma once

// Recipes: recast a pretrained model into another form. A recipe takes the
// loaded source model and its options and returns the converted model (with a
// config that describes the conversion, so every verb loads it without extra
// flags) and a per-layer report of the error it introduces.

#include "recast/core/registry.h"
#include "recast/models/model.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace recast::recipes {

struct RecipeOptions {
  nlohmann::json values = nlohmann::json::object();  // recipe-specific (--feature-map, ...)
  std::string layers;     // regex searched in each module's dotted checkpoint name ("" = all)
  uint64_t seed = 0;
  models::Batch probe;    // inputs the per-layer error is measured on
  // Training batches to re-estimate BatchNorm statistics on after the recast
  // (factorize --recalibrate-bn N); none: the statistics stay as they were.
  std::vector<models::Batch> calibration;
  // Training batches whose layer inputs whiten the factorization (factorize
  // --whiten N); none: the plain SVD of each weight.
  std::vector<models::Batch> whitening;
};

struct LayerReport {
  std::string module;     // "transformer.h.3.attn"
  std::string replaced;   // "softmax attention -> t2r linear attention (64 features)"
  double relative_error;  // ||y_new - y_old|| / ||y_old|| on the probe, layer inputs from the source
                          // (tcnn: max |y_new - y_old| / max |y_old|)
  double max_abs_error = -1;  // max |y_new - y_old| where the recipe reports it (tcnn), else -1
  std::string detail;         // how it was measured, where that varies
};

struct Conversion {
  models::ModelPtr model;
  std::vector<LayerReport> report;
  nlohmann::json manifest;  // recipe, options, layers
  std::string table;        // the recipe's own report, printed instead of the generic one
};

using Recipe = std::function<Conversion(models::Model& source, const RecipeOptions& options)>;
Registry<Recipe>& recipe_registry();

// Module names the recipe may replace that match `pattern` (std::regex_search;
// empty matches all). An invalid regex or no match is a usage error naming
// what the names look like.
std::vector<std::string> select_modules(const std::vector<std::string>& candidates,
                                        const std::string& pattern);

// Every parameter and buffer of `m` by its checkpoint name.
std::map<std::string, at::Tensor> named_tensors(const models::Model& m);

// Copies every tensor of `from` into the same-named tensor of `to`; returns
// the names of `to` that `from` lacks (the recipe's new parameters). Throws on
// a tensor of `from` that `to` lacks or whose shape differs.
std::vector<std::string> copy_matching_weights(const models::Model& from, models::Model& to);

void register_t2r(Registry<Recipe>& r);
void register_tcnn(Registry<Recipe>& r);
void register_factorize(Registry<Recipe>& r);  // factorize and merge

// Re-estimates every BatchNorm's running statistics from `batches` (the
// cumulative average over them, as momentum=None does in PyTorch), with no
// gradient step, and puts the model back in eval mode. Returns how many
// BatchNorm layers it recalibrated.
int64_t recalibrate_batchnorm(models::Model& model, const std::vector<models::Batch>& batches);

// T2R: the relative error of each linear-attention layer against the softmax
// attention it replaced, each layer fed the softmax model's inputs.
std::vector<LayerReport> measure_t2r(models::Model& model, const models::Batch& probe);

}  // namespace recast::recipes

namespace recast::recipes {

// T-CNN: for each ConvAttention of `converted`, its output against the source's
// convolution of the same name on the same input (the converted network's
// input to that layer on `probe`).
std::vector<LayerReport> measure_tcnn(models::Model& source, models::Model& converted,
                                      const models::Batch& probe);

}  // namespace recast::recipes
