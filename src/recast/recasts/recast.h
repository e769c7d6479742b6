#pragma once

// A recast is one registered object that says everything recast needs to
// know about it, so that the CLI, the trainer and the model families name no
// particular recast:
//   - its name, summary and config key ("recast_t2r"): the block a converted
//     checkpoint's config.json carries, parsed and validated by the recast,
//     which then claims the model's slots (models/slots.h) it fills;
//   - its convert step (`recast convert --recipe NAME`) with its own options,
//     declared as OptionSpecs that `recast convert` adds as a CLI11 option group;
//   - its training options (OptionSpecs added to pretrain / finetune) and the
//     training hooks it registers for a model (train/hooks.h): parameter
//     groups, penalties, logged statistics, the resume fingerprint;
//   - its report (Conversion::report / table / manifest).
// Each recast lives in one file of this folder (plus its layer in layers/)
// and registers itself with RECAST_REGISTER_RECAST.

#include "recast/core/registry.h"
#include "recast/models/model.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace recast::train {
class TrainHook;
class Dataset;
class Objective;
}  // namespace recast::train

namespace recast::recasts {

// One command-line option of a recast: "--feature-dim" stored under "feature_dim".
struct OptionSpec {
  enum class Type { Int, Double, String, Flag };
  OptionSpec(std::string f, std::string k, Type t, std::string h)
      : flag(std::move(f)), key(std::move(k)), type(t), help(std::move(h)) {}
  std::string flag;  // "--feature-dim"
  std::string key;   // "feature_dim": its key in the values object
  Type type = Type::Double;
  std::string help;
  nlohmann::json flag_value = true;  // what a Flag stores when given
  nlohmann::json fallback;           // stored when not given (null: absent)
  // The accepted range of an Int / Double (finite; min excluded with
  // open_min): anything else is a usage error before work starts.
  double min = 0, max = 1e12;
  bool open_min = false;
  OptionSpec& range(double lo, double hi, bool open_lo = false) {
    min = lo, max = hi, open_min = open_lo;
    return *this;
  }
};

struct RecipeOptions {
  // The recast's options by key (those given, and the fallbacks of the rest).
  nlohmann::json values = nlohmann::json::object();
  std::string layers;  // regex searched in each module's dotted checkpoint name ("" = all)
  uint64_t seed = 0;
  models::Batch probe;  // inputs the per-layer error is measured on
  // --data: the name as given ("" without), its training split (tokenized or
  // normalised as the model reads it; null without --data), and N shuffled
  // training batches of it on the model's device (unset without --data), for
  // recasts that calibrate (BatchNorm statistics, whitening) or train.
  std::string data;
  const train::Dataset* train_data = nullptr;
  std::function<std::vector<models::Batch>(int64_t n)> training_batches;
  int64_t batch_size = 8;
  c10::Device device = c10::kCPU;
  // A scratch directory the recast may write a training run into (removed
  // with the conversion's temporary directory); "" when there is none.
  std::string work_dir;
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
  // Extra manifest sections written beside "conversion" ("attention_transfer").
  nlohmann::json extra = nlohmann::json::object();
  // Reports printed after the one at init, by title ("after 20 transfer steps").
  std::vector<std::pair<std::string, std::vector<LayerReport>>> later;
};

class Recast {
 public:
  virtual ~Recast() = default;
  virtual std::string name() const = 0;
  virtual std::string summary() const = 0;

  // The config block of a converted model ("" when the recast adds no layers).
  virtual std::string config_key() const { return ""; }
  // Parses and validates the block; the result claims and builds slots.
  virtual std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const;

  // recast convert --recipe NAME.
  virtual std::vector<OptionSpec> convert_options() const { return {}; }
  virtual Conversion convert(models::Model& source, const RecipeOptions& options) const = 0;

  // pretrain / finetune: the options this recast adds (their values reach
  // train_hooks and the resume fingerprint by key, whether given or not).
  virtual std::vector<OptionSpec> train_options() const { return {}; }
  virtual std::vector<std::shared_ptr<train::TrainHook>> train_hooks(
      models::Model& model, const nlohmann::json& values) const;
};

using RecastPtr = std::shared_ptr<const Recast>;
// Registered recasts by name, listed as "recipe"s by `recast list`.
Registry<RecastPtr>& registry();
const Recast& get(const std::string& name);
// The recast whose config block is `key`, or nullptr.
const Recast* recast_for_config_key(const std::string& key);

template <typename T>
struct Registration {
  Registration() {
    auto r = std::make_shared<T>();
    registry().add(r->name(), r->summary(), r);
  }
};
#define RECAST_REGISTER_RECAST(Type) \
  static const ::recast::recasts::Registration<Type> recast_registration_##Type

// The values of `specs` in `values` plus the fallbacks of those not given.
nlohmann::json with_fallbacks(const std::vector<OptionSpec>& specs, nlohmann::json values);

// ---------------------------------------------------------------- shared by recipes

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
// `droppable` names tensors of `from` that `to` may lack (the layers a
// recipe replaces); those skipped are added to `dropped`.
std::vector<std::string> copy_matching_weights(
    const models::Model& from, models::Model& to,
    const std::function<bool(const std::string&)>& droppable = {},
    std::vector<std::string>* dropped = nullptr);

// The source's config with `block` under `key`, built as a new model on the
// source's device with every tensor of the source copied in; `fresh` gets the
// names of the new tensors, each of which must satisfy `expected`.
models::ModelPtr rebuild_with(const models::Model& source, const std::string& key,
                              const nlohmann::json& block, uint64_t seed,
                              const std::function<bool(const std::string&)>& expected,
                              std::vector<std::string>* fresh,
                              const std::function<bool(const std::string&)>& droppable = {},
                              std::vector<std::string>* dropped = nullptr);

// The train lines of an attention-transfer run's metrics.jsonl as
// [{"step", "mse_sum"}].
nlohmann::json transfer_curve(const std::string& metrics);

// Attention transfer as an ordinary training run (o.work_dir/transfer) of the
// parameters matching `train_regex` under `objective`: AdamW without decay,
// a 10 % warm-up then cosine to lr / 10, on o.train_data; every parameter is
// trainable again afterwards. Returns the manifest section without the
// error after it ({"steps", "lr", "data", "curve"}).
nlohmann::json run_attention_transfer(models::Model& model, const RecipeOptions& o, int64_t steps,
                                      double lr, double clip, const std::string& train_regex,
                                      std::shared_ptr<train::Objective> objective);

// Re-estimates every BatchNorm's running statistics from `batches` (the
// cumulative average over them, as momentum=None does in PyTorch), with no
// gradient step, and puts the model back in eval mode. Returns how many
// BatchNorm layers it recalibrated.
int64_t recalibrate_batchnorm(models::Model& model, const std::vector<models::Batch>& batches);

// The whole model's output on the probe, before and after: max_abs, relative
// (Frobenius) and the fraction of unchanged argmax predictions.
nlohmann::json output_change(models::Model& before, models::Model& after, const models::Batch& probe);

// The per-layer report as a table on stdout (`when`: the error column's
// title), and as the manifest's JSON list.
void print_report(const std::vector<LayerReport>& report, const char* when);
nlohmann::json report_json(const std::vector<LayerReport>& report);

// The built slots of `model` of `kind` that `recast` built ("" = dense).
std::vector<const models::BuiltSlot*> slots_of(const models::Model& model, models::SlotKind kind,
                                               const std::string& recast = "");

}  // namespace recast::recasts
