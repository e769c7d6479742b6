// Recipes factorize and merge (Khodak et al. 2021). factorize holds selected
// dense projections and convolutions as low-rank products U V^T with the
// spectral init (U = A_r sqrt(S_r), V = B_r sqrt(S_r) from the SVD of the
// weight), at a rank chosen per layer by --rank-ratio, by --energy, or from a
// whole-model parameter budget --params; merge multiplies the factors back.
//
// The --params rule: one energy fraction tau for every selected layer, each
// keeping the smallest rank whose leading singular values hold tau of its
// sum s^2 (a layer whose rank would not save parameters stays dense); tau is
// the largest for which the whole checkpoint holds at most F of its
// parameters (bisection; the count is monotone in tau). Layers with a flat
// spectrum get more rank, layers with a steep one less, and every layer
// loses the same fraction of its energy.
//
// With --whiten N the spectrum is that of W L, L L^T the (damped) second
// moment of the layer's inputs on N training batches (SVD-LLM's
// truncation-aware whitening, layers::whitened_spectrum): the factors keep the
// layer's outputs rather than its weights, and every rule above reads the
// output energy instead of the weight's.

#include "recast/recasts/factorize.h"
#include "recast/recasts/recast.h"
#include "recast/train/hooks.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>

namespace recast::recasts {
namespace {

constexpr const char* kKey = "recast_factorized";

// Numbers as `recast inspect` counts them: every stored tensor's elements.
int64_t stored_elements(const models::Model& m) {
  int64_t n = 0;
  for (const auto& [name, t] : models::state_dict_for_save(m)) n += t.numel();
  return n;
}

// Copies into `to` every tensor `provided` holds and every other one from
// `from` by name; the tensors of `from` left over must be exactly `dropped`.
void assemble(const models::Model& from, models::Model& to,
              const std::map<std::string, at::Tensor>& provided,
              const std::set<std::string>& dropped, const char* recipe) {
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> source = named_tensors(from);
  for (auto& [name, target] : named_tensors(to)) {
    auto p = provided.find(name);
    const at::Tensor* value = nullptr;
    if (p != provided.end()) {
      value = &p->second;
    } else {
      auto s = source.find(name);
      if (s == source.end()) throw Error(msg("recipe ", recipe, ": no value for tensor ", quote(name)));
      value = &s->second;
    }
    RECAST_CHECK(value->sizes() == target.sizes(), "recipe ", recipe, ": tensor ", quote(name),
                 ": ", shape_string(value->sizes()), " computed, ", shape_string(target.sizes()),
                 " in the converted model");
    target.copy_(*value);
    source.erase(name);
  }
  for (const auto& kv : source) {
    RECAST_CHECK(dropped.count(kv.first), "recipe ", recipe, ": tensor ", quote(kv.first),
                 " of the source has no place in the converted model");
  }
}

struct Layer {
  std::string name;
  bool transposed = false, conv = false;
  std::vector<int64_t> shape;  // the stored dense weight's
  int64_t m = 0, n = 0;        // the matrix: out x (in * kh * kw)
  int64_t bias = 0;
  at::Tensor matrix;            // the dense weight as out x (in * kh * kw)
  layers::Spectrum sp;          // what the rank rules read: of W, or of W L when whitened
  std::vector<double> kept;     // cumulative energy fraction after 1..k singular values
  int64_t rank = 0;             // 0: stays dense
  std::optional<layers::Spectrum> plain;    // the weight's own, when sp is whitened
  std::optional<layers::Whitened> whitened;
  at::Tensor gram;              // the inputs' second moment (whitened only)

  layers::Factors factors(int64_t r) const {
    return whitened ? layers::whitened_factors(*whitened, r) : layers::spectral_factors(sp, r);
  }
};

// The checkpoint tensors of layer l's factors at rank r, in l's dtype.
void put_factors(std::map<std::string, at::Tensor>& out, std::set<std::string>& dropped,
                 const Layer& l, int64_t r, const layers::Factors& f, at::ScalarType dtype) {
  out[l.name + ".weight_u"] = (l.conv ? f.u.reshape({l.m, r, 1, 1}) : f.u).to(dtype);
  out[l.name + ".weight_v"] =
      (l.conv ? f.v.t().reshape({r, l.shape[1], l.shape[2], l.shape[3]}) : f.v.t().contiguous())
          .to(dtype);
  dropped.insert(l.name + ".weight");
}

// A copy of `source` (on its device) whose layers named in `fc` hold
// `factors(layer, rank)`; every other tensor is the source's.
models::ModelPtr factorized_copy(
    const models::Model& source, const std::vector<Layer>& ls, const layers::FactorizedConfig& fc,
    const std::function<layers::Factors(const Layer&, int64_t)>& factors) {
  const auto source_tensors = named_tensors(source);
  std::map<std::string, at::Tensor> tensors;
  std::set<std::string> dropped;
  for (const auto& l : ls) {
    auto r = fc.layers.find(l.name);
    if (r == fc.layers.end()) continue;
    put_factors(tensors, dropped, l, r->second, factors(l, r->second),
                source_tensors.at(l.name + ".weight").scalar_type());
  }
  nlohmann::json config = source.config();
  config[kKey] = fc.to_json();
  models::ModelPtr model = models::create_model(source.arch(), config);
  assemble(source, *model, tensors, dropped, "factorize");
  model->set_metadata(source.metadata());
  model->to(source.device());
  return model;
}

// Each layer's input second moment (sum x x^T / rows) on `batches`, through
// a copy of the source with those layers factorized at full rank from their
// weights' spectra (which computes what the dense layers do, to rounding)
// recording their inputs.
std::map<std::string, at::Tensor> input_grams(const models::Model& source, const std::vector<Layer>& ls,
                                              const std::vector<models::Batch>& batches) {
  layers::FactorizedConfig fc;
  for (const auto& l : ls) fc.layers[l.name] = l.sp.full_rank();
  models::ModelPtr recorder = factorized_copy(source, ls, fc, [](const Layer& l, int64_t r) {
    return layers::spectral_factors(l.sp, r);
  });
  std::map<std::string, std::shared_ptr<layers::InputGram>> grams;
  for (const auto& item : recorder->named_modules("", false)) {
    if (!fc.layers.count(item.key())) continue;
    auto g = std::make_shared<layers::InputGram>();
    if (auto* lin = item.value()->as<layers::FactorizedLinear>()) lin->record_inputs = g;
    if (auto* conv = item.value()->as<layers::FactorizedConv2d>()) conv->record_inputs = g;
    grams[item.key()] = g;
  }
  torch::NoGradGuard no_grad;
  recorder->eval();
  for (const auto& b : batches) recorder->forward(b);
  std::map<std::string, at::Tensor> out;
  for (const auto& l : ls) {
    const auto& g = grams.at(l.name);
    RECAST_CHECK(g->rows > 0, "--whiten: layer ", quote(l.name), " saw no inputs");
    out[l.name] = (g->sum / static_cast<double>(g->rows)).to(at::kCPU);
  }
  return out;
}

// The weight's numbers at `rank` (0: dense), with the dense fallback.
int64_t weight_elements(const Layer& l, int64_t rank) {
  return rank > 0 && layers::saves_parameters(l.m, l.n, rank) ? rank * (l.m + l.n) : l.m * l.n;
}

// Ranks for a whole-checkpoint budget of `fraction` of `total` numbers.
void allocate_budget(std::vector<Layer>& ls, double fraction, int64_t total) {
  if (!(fraction > 0 && fraction <= 1)) {
    throw UsageError(msg("--params: expected a fraction in (0, 1], found ", fraction));
  }
  int64_t fixed = total;
  for (const auto& l : ls) fixed -= l.m * l.n;
  const double budget = fraction * static_cast<double>(total);
  auto count = [&](double tau) {
    int64_t n = fixed;
    for (const auto& l : ls) n += weight_elements(l, layers::rank_keeping(l.kept, tau));
    return n;
  };
  const int64_t smallest = count(0.0);  // rank 1 everywhere it saves
  if (static_cast<double>(smallest) > budget) {
    throw UsageError(msg("--params ", fraction, ": unreachable with these layers; rank 1 in each "
                         "keeps ", smallest, " of ", total, " numbers (",
                         static_cast<double>(smallest) / static_cast<double>(total),
                         "); select more layers or ask for more"));
  }
  double lo = 0.0, hi = 1.0;
  if (static_cast<double>(count(hi)) <= budget) lo = hi;
  for (int i = 0; i < 60 && hi - lo > 1e-12; ++i) {
    const double mid = 0.5 * (lo + hi);
    (static_cast<double>(count(mid)) <= budget ? lo : hi) = mid;
  }
  for (auto& l : ls) l.rank = layers::rank_keeping(l.kept, lo);
}

std::string human(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e4) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

Conversion factorize(models::Model& source, const RecipeOptions& o) {
  const int64_t recalibrate = o.values.value("recalibrate_bn", int64_t{0});
  const int64_t whiten = o.values.value("whiten", int64_t{0});
  if (recalibrate < 0 || (recalibrate > 0 && !o.training_batches)) {
    throw UsageError(msg("--recalibrate-bn ", recalibrate,
                         ": expected N >= 1 batches with --recipe factorize and --data (images)"));
  }
  if (recalibrate > 0 && source.task() != models::Task::ImageClassification) {
    throw UsageError("--recalibrate-bn: re-estimates BatchNorm statistics of image models; "
                     "this model reads text");
  }
  if (whiten < 0 || (whiten > 0 && !o.training_batches)) {
    throw UsageError(msg("--whiten ", whiten,
                         ": expected N >= 1 batches with --recipe factorize and --data"));
  }
  if (o.values.contains("whiten_damp") && (whiten <= 0 || !(o.values["whiten_damp"].get<double>() >= 0))) {
    throw UsageError(msg("--whiten-damp ", o.values["whiten_damp"].get<double>(),
                         ": expected a value >= 0, with --whiten N"));
  }
  const std::vector<models::Batch> whitening =
      whiten > 0 ? o.training_batches(whiten) : std::vector<models::Batch>{};
  const std::vector<models::Batch> calibration =
      recalibrate > 0 ? o.training_batches(recalibrate) : std::vector<models::Batch>{};
  if (source.config().contains(kKey)) {
    throw UsageError("recipe factorize: the model is already factorized (config has "
                     "recast_factorized); merge it first (--recipe merge)");
  }
  std::map<std::string, bool> offered;
  std::vector<std::string> names;
  for (const auto& d : factorizable_layers(source)) {
    offered[d.name] = d.transposed;
    names.push_back(d.name);
  }
  if (names.empty()) {
    throw UsageError(msg("recipe factorize: ", source.arch(),
                         " has no dense linear or convolution slots to factorize"));
  }
  const int rules = static_cast<int>(o.values.contains("rank_ratio")) +
                    static_cast<int>(o.values.contains("energy")) +
                    static_cast<int>(o.values.contains("params"));
  if (rules != 1) {
    throw UsageError("recipe factorize: give exactly one of --rank-ratio R, --energy E, --params F");
  }
  const std::vector<std::string> chosen = select_modules(names, o.layers);
  // A layer whose factors would hold at least as many numbers as its dense
  // weight stays dense, unless asked otherwise (full-rank checks).
  const bool dense_fallback = o.values.value("dense_fallback", true);

  // Each selected weight as the matrix out x (in * kh * kw), and its SVD.
  const auto source_tensors = named_tensors(source);
  std::vector<Layer> ls;
  for (const auto& name : chosen) {
    Layer l;
    l.name = name;
    l.transposed = offered.at(name);
    const at::Tensor& w = source_tensors.at(name + ".weight");
    l.shape = w.sizes().vec();
    l.conv = w.dim() == 4;
    l.matrix = (l.transposed ? w.t() : w.reshape({w.size(0), -1})).detach();
    l.m = l.matrix.size(0);
    l.n = l.matrix.size(1);
    auto b = source_tensors.find(name + ".bias");
    l.bias = b == source_tensors.end() ? 0 : b->second.numel();
    l.sp = layers::spectrum(l.matrix);
    ls.push_back(std::move(l));
  }
  const double damp = o.values.value("whiten_damp", 0.01);
  if (!whitening.empty()) {
    if (!(damp >= 0)) throw UsageError(msg("--whiten-damp: expected >= 0, found ", damp));
    const auto grams = input_grams(source, ls, whitening);
    for (auto& l : ls) {
      l.gram = grams.at(l.name);
      l.whitened = layers::whitened_spectrum(l.matrix, l.gram, damp);
      l.plain = l.sp;
      l.sp = l.whitened->sp;
    }
  }
  for (auto& l : ls) l.kept = layers::energy_kept(l.sp.s);
  const int64_t total_before = stored_elements(source);
  std::string rule;
  if (o.values.contains("rank_ratio")) {
    const double ratio = o.values["rank_ratio"].get<double>();
    for (auto& l : ls) l.rank = layers::rank_for_ratio(ratio, l.m, l.n);
    rule = msg("rank ratio ", ratio);
  } else if (o.values.contains("energy")) {
    const double energy = o.values["energy"].get<double>();
    for (auto& l : ls) l.rank = layers::rank_for_energy(l.sp.s, energy);
    rule = msg("energy ", energy);
  } else {
    if (!dense_fallback) {
      throw UsageError("--no-dense-fallback: not with --params (the budget counts dense layers)");
    }
    const double fraction = o.values["params"].get<double>();
    allocate_budget(ls, fraction, total_before);
    rule = msg("parameter budget ", fraction);
  }
  layers::FactorizedConfig fc;
  for (auto& l : ls) {
    if (dense_fallback && !layers::saves_parameters(l.m, l.n, l.rank)) l.rank = 0;  // stays dense
    if (l.rank > 0) fc.layers[l.name] = l.rank;
  }
  if (fc.layers.empty()) {
    throw UsageError(msg("recipe factorize (", rule, "): no selected layer saves parameters at "
                         "its rank; nothing to factorize"));
  }

  models::ModelPtr model =
      factorized_copy(source, ls, fc, [](const Layer& l, int64_t r) { return l.factors(r); });

  // The report: per layer rank, numbers and FLOPs before and after, and the
  // reconstruction error of the factors as stored against the dense weight.
  Conversion c;
  c.model = model;
  nlohmann::json rows = nlohmann::json::array();
  int64_t flops_before = 0, flops_after = 0;
  std::string table = msg("factorize (", rule, "): ", fc.layers.size(), " of ", ls.size(),
                          " selected layers factorized\n");
  char line[256];
  const bool whitened = !whitening.empty();
  std::snprintf(line, sizeof line, "%-30s %-9s %6s %9s %9s %9s %9s %10s %10s", "layer", "kind",
                "rank", "of", "params", "->", "FLOPs/pos", "->", "rel error");
  table += line;
  // Whitened: the outputs' error on the calibration inputs, and what the
  // plain SVD at the same rank would give.
  table += whitened ? msg("  ", "out error", "  ", "plain SVD", "\n") : std::string("\n");
  const auto tensors_after = named_tensors(*model);
  for (const auto& l : ls) {
    const int64_t full = l.sp.full_rank();
    const int64_t before = l.m * l.n + l.bias;
    const int64_t after = (l.rank > 0 ? l.rank * (l.m + l.n) : l.m * l.n) + l.bias;
    const int64_t fb = 2 * l.m * l.n, fa = l.rank > 0 ? 2 * l.rank * (l.m + l.n) : fb;
    flops_before += fb;
    flops_after += fa;
    double error = 0.0, bound = 0.0, out_error = 0.0, out_plain = 0.0;
    if (l.rank > 0) {
      // ||W - U V^T||_F / ||W||_F in fp64, from the factors as stored.
      torch::NoGradGuard no_grad;
      const at::Tensor u = tensors_after.at(l.name + ".weight_u").to(at::kCPU, at::kDouble).reshape({l.m, l.rank});
      const at::Tensor v = tensors_after.at(l.name + ".weight_v").to(at::kCPU, at::kDouble).reshape({l.rank, l.n});
      const at::Tensor dense = l.matrix.to(at::kCPU, at::kDouble);
      error = ((dense - at::matmul(u, v)).norm() / dense.norm().clamp_min(1e-300)).item<double>();
      bound = layers::eckart_young_relative(l.sp.s, l.rank);
      if (whitened) {
        out_error = layers::output_error(dense, {u, v.t()}, l.gram);
        out_plain = layers::output_error(dense, layers::spectral_factors(*l.plain, l.rank), l.gram);
      }
    }
    const std::string kind =
        l.conv ? msg("conv", l.shape[2], "x", l.shape[3]) : std::string("linear");
    rows.push_back({{"module", l.name},
                    {"kind", kind},
                    {"matrix", {l.m, l.n}},
                    {"rank", l.rank > 0 ? nlohmann::json(l.rank) : nlohmann::json("dense")},
                    {"full_rank", full},
                    {"params_before", before},
                    {"params_after", after},
                    {"flops_per_position_before", fb},
                    {"flops_per_position_after", fa},
                    {"relative_error", error},
                    {"eckart_young_bound", bound},
                    {"energy_kept", l.rank > 0 ? l.kept[static_cast<size_t>(l.rank - 1)] : 1.0}});
    if (whitened) {
      // The bound and the energy above are the whitened spectrum's (outputs).
      rows.back()["output_error"] = out_error;
      rows.back()["output_error_plain_svd"] = out_plain;
      rows.back()["whitening_damp"] = l.whitened->damp;
    }
    std::snprintf(line, sizeof line, "%-30s %-9s %6s %9lld %9s %9s %9s %10s %10.3e",
                  l.name.c_str(), kind.c_str(),
                  l.rank > 0 ? std::to_string(l.rank).c_str() : "dense",
                  static_cast<long long>(full), human(static_cast<double>(before)).c_str(),
                  human(static_cast<double>(after)).c_str(), human(static_cast<double>(fb)).c_str(),
                  human(static_cast<double>(fa)).c_str(), error);
    table += line;
    if (whitened) {
      std::snprintf(line, sizeof line, " %10.3e %10.3e", out_error, out_plain);
      table += line;
    }
    table += "\n";
    LayerReport r;
    r.module = l.name;
    r.replaced = l.rank > 0 ? msg(kind, " ", l.m, "x", l.n, " -> rank ", l.rank, " factors")
                            : msg(kind, " kept dense (a factorization would not save parameters)");
    r.relative_error = error;
    r.detail = "||W - U V^T||_F / ||W||_F";
    c.report.push_back(r);
  }
  const int64_t total_after = stored_elements(*model);
  std::snprintf(line, sizeof line,
                "checkpoint: %lld -> %lld numbers (%.4f of the original); selected layers' FLOPs "
                "per position %s -> %s\n",
                static_cast<long long>(total_before), static_cast<long long>(total_after),
                static_cast<double>(total_after) / static_cast<double>(total_before),
                human(static_cast<double>(flops_before)).c_str(),
                human(static_cast<double>(flops_after)).c_str());
  table += line;
  nlohmann::json change, recalibrated;
  const bool probed = o.probe.input_ids.defined() || o.probe.pixel_values.defined();
  if (!calibration.empty()) {
    nlohmann::json before;
    if (probed) before = output_change(source, *model, o.probe);
    const int64_t norms = recalibrate_batchnorm(*model, calibration);
    if (norms == 0) {
      throw UsageError(msg("--recalibrate-bn: ", source.arch(), " has no BatchNorm layers"));
    }
    recalibrated = {{"batchnorm_layers", norms},
                    {"batches", calibration.size()},
                    {"logits_change_before", before}};
    table += msg("BatchNorm statistics re-estimated in ", norms, " layers on ",
                 calibration.size(), " training batches\n");
  }
  if (probed) change = output_change(source, *model, o.probe);
  c.table = table;
  nlohmann::json options = nlohmann::json::object();  // this recipe's, not every recipe's
  for (const char* key : {"rank_ratio", "energy", "params", "dense_fallback"}) {
    if (o.values.contains(key)) options[key] = o.values[key];
  }
  if (whitened) {
    options["whiten"] = whitening.size();
    options["whiten_damp"] = damp;
  }
  if (!calibration.empty()) options["recalibrate_bn"] = calibration.size();
  c.manifest = {{"recipe", "factorize"},
                {"rule", rule},
                {"options", options},
                {"layers", rows},
                {"factorized", fc.to_json()},
                {"params_before", total_before},
                {"params_after", total_after},
                {"params_fraction",
                 static_cast<double>(total_after) / static_cast<double>(total_before)},
                {"flops_per_position_before", flops_before},
                {"flops_per_position_after", flops_after},
                {"logits_change", change},
                {"batchnorm_recalibration", recalibrated}};
  return c;
}

Conversion merge(models::Model& source, const RecipeOptions& o) {
  const auto fc = layers::FactorizedConfig::from(source.config());
  if (!fc) {
    throw UsageError("recipe merge: the model has no factorized layers (config has no "
                     "recast_factorized)");
  }
  if (!o.layers.empty()) {
    throw UsageError("recipe merge: --layers is not supported; merge multiplies every factorized layer back");
  }
  nlohmann::json config = source.config();
  config.erase(kKey);
  models::ModelPtr model = models::create_model(source.arch(), config);
  std::map<std::string, bool> transposed;
  for (const auto& d : factorizable_layers(*model)) transposed[d.name] = d.transposed;
  std::map<std::string, at::Tensor> dense;
  std::set<std::string> dropped;
  Conversion c;
  torch::NoGradGuard no_grad;
  for (const auto& item : source.named_modules("", false)) {
    at::Tensor w;
    if (auto* l = item.value()->as<layers::FactorizedLinear>()) {
      w = l->dense_weight();
    } else if (auto* cv = item.value()->as<layers::FactorizedConv2d>()) {
      w = cv->dense_weight();
    } else {
      continue;
    }
    const std::string& name = item.key();
    auto t = transposed.find(name);
    RECAST_CHECK(t != transposed.end(), "recipe merge: ", source.arch(), " has no dense slot ",
                 quote(name));
    dense[name + ".weight"] = t->second ? w.t().contiguous() : w.contiguous();
    dropped.insert(name + ".weight_u");
    dropped.insert(name + ".weight_v");
    LayerReport r;
    r.module = name;
    r.replaced = msg("rank ", fc->layers.at(name), " factors -> dense ", shape_string(w.sizes()));
    r.detail = "||W - U V^T||_F / ||U V^T||_F, U V^T in fp64";
    c.report.push_back(r);
  }
  assemble(source, *model, dense, dropped, "merge");
  // The merged weights as stored against the product computed in fp64.
  const auto merged = named_tensors(*model);
  const auto factors = named_tensors(source);
  for (auto& r : c.report) {
    const at::Tensor u = factors.at(r.module + ".weight_u").to(at::kCPU, at::kDouble);
    const at::Tensor v = factors.at(r.module + ".weight_v").to(at::kCPU, at::kDouble);
    const at::Tensor product = at::matmul(u.reshape({u.size(0), -1}), v.reshape({v.size(0), -1}));
    at::Tensor w = merged.at(r.module + ".weight").to(at::kCPU, at::kDouble);
    w = transposed.at(r.module) ? w.t() : w.reshape({w.size(0), -1});
    r.relative_error = ((w - product).norm() / product.norm().clamp_min(1e-300)).item<double>();
  }
  model->set_metadata(source.metadata());
  model->to(source.device());
  c.model = model;
  nlohmann::json change;
  if (o.probe.input_ids.defined() || o.probe.pixel_values.defined()) {
    change = output_change(source, *model, o.probe);
  }
  c.manifest = {{"recipe", "merge"},
                {"merged", fc->to_json()},
                {"params_before", stored_elements(source)},
                {"params_after", stored_elements(*model)},
                {"logits_change", change}};
  return c;
}


// ---------------------------------------------------------------- slots

class FactorizedFiller : public models::SlotFiller {
 public:
  explicit FactorizedFiller(layers::FactorizedConfig c) : c_(std::move(c)) {}
  bool claims(const models::Slot& s) const override {
    return (s.kind == models::SlotKind::Linear || s.kind == models::SlotKind::Conv2d) &&
           c_.rank(s.name).has_value();
  }
  torch::nn::AnyModule build(const models::Slot& s) const override {
    const int64_t rank = *c_.rank(s.name);
    if (s.kind == models::SlotKind::Linear) {
      layers::FactorizedLinearOptions o;
      o.in = s.in, o.out = s.out, o.rank = rank, o.bias = s.bias;
      return torch::nn::AnyModule(layers::FactorizedLinear(o));
    }
    layers::FactorizedConv2dOptions o;
    o.in = s.in, o.out = s.out, o.rank = rank, o.bias = s.bias;
    o.kernel = {s.kernel, s.kernel}, o.stride = {s.stride, s.stride}, o.padding = {s.padding, s.padding};
    return torch::nn::AnyModule(layers::FactorizedConv2d(o));
  }
  // The spectral factors of the dense layer's init.
  void init(const models::Slot& slot, torch::nn::Module& layer,
            const models::DenseInitFn& dense) const override {
    if (auto* l = layer.as<layers::FactorizedLinear>()) init_from(*l, dense, slot);
    if (auto* c = layer.as<layers::FactorizedConv2d>()) init_from(*c, dense, slot);
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>& offered) const override {
    for (const auto& [name, rank] : c_.layers) {
      bool found = false;
      for (const auto* s : claimed) found = found || s->name == name;
      if (found) continue;
      bool exists = false;
      for (const auto& s : offered) exists = exists || s.name == name;
      throw Error(exists ? msg("config key 'recast_factorized': cannot factorize ", quote(name))
                         : msg("config key 'recast_factorized': the model has no module ", quote(name)));
    }
  }

 private:
  template <typename Layer>
  static void init_from(Layer& l, const models::DenseInitFn& dense, const models::Slot& s) {
    const models::DenseInit d = dense(s);
    l.set_from_dense(d.weight);
    if (l.bias.defined() && d.bias.defined()) l.bias.copy_(d.bias);
  }
  layers::FactorizedConfig c_;
};

// ---------------------------------------------------------------- Frobenius decay

// (lambda/2) sum ||U V^T||_F^2 over every factorized layer (and with
// --fd-attention each head's W_Q W_K^T and W_V W_O), in the Gram form, once
// per step; those factors get no weight decay.
class FrobeniusDecay : public train::TrainHook {
 public:
  FrobeniusDecay(double lambda, bool attention) : lambda_(lambda), attention_(attention) {}
  std::string name() const override { return "frobenius"; }
  std::set<std::string> setup(models::Model& model, const std::set<std::string>& trainable) override {
    model_ = &model;
    if (attention_ && attention_factor_pairs(model).empty()) {
      throw UsageError(msg("--fd-attention: ", model.arch(),
                           " has no dense multi-head attention to regularise (GPT-2 and Llama have; "
                           "factorized attention gets Frobenius decay on its own factors)"));
    }
    std::set<std::string> params;
    for (const auto& p : pairs()) {
      for (const auto& name : p.params) {
        if (trainable.count(name)) params.insert(name);
      }
    }
    if (params.empty()) {
      throw UsageError(msg("--frobenius-decay: ", model.arch(), " has no trained factorized layers",
                           attention_ ? " or dense attention" : "",
                           " (convert with --recipe factorize, or add --fd-attention)"));
    }
    return params;
  }
  at::Tensor penalty() override {
    at::Tensor sum;
    for (const auto& p : pairs()) {
      if (p.u.requires_grad() || p.v.requires_grad()) {
        const at::Tensor f = layers::frobenius_penalty(p.u, p.v).to(at::kFloat);
        sum = sum.defined() ? sum + f : f;
      }
    }
    return sum;
  }
  double penalty_weight() const override { return lambda_; }

 private:
  // The factor pairs (views, taken afresh each step).
  std::vector<layers::FactorPair> pairs() const {
    std::vector<layers::FactorPair> out = layers::factorized_pairs(*model_);
    if (attention_) {
      for (auto& p : attention_factor_pairs(*model_)) out.push_back(std::move(p));
    }
    return out;
  }
  double lambda_;
  bool attention_;
  models::Model* model_ = nullptr;
};

// ---------------------------------------------------------------- the recasts

class Factorize : public Recast {
 public:
  std::string name() const override { return "factorize"; }
  std::string summary() const override {
    return "dense / conv weights -> low-rank products U V^T with spectral (SVD) init; by --rank-ratio, "
           "--energy or a parameter budget --params; train with --frobenius-decay";
  }
  std::string config_key() const override { return kKey; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<FactorizedFiller>(layers::FactorizedConfig::parse(block));
  }
  std::vector<OptionSpec> convert_options() const override {
    using T = OptionSpec::Type;
    OptionSpec no_fallback{"--no-dense-fallback", "dense_fallback", T::Flag,
                           "factorize: factorize every selected layer, also where the factors hold "
                           "more numbers than the dense weight (full-rank exactness checks)"};
    no_fallback.flag_value = false;
    return {OptionSpec("--rank-ratio", "rank_ratio", T::Double,
                       "factorize: rank = round(R * min(m, n)) in every selected layer")
                .range(0, 1, true),
            OptionSpec("--energy", "energy", T::Double,
                       "factorize: the smallest rank keeping this fraction of sum s^2 per layer")
                .range(0, 1, true),
            OptionSpec("--params", "params", T::Double,
                       "factorize: keep this fraction of the checkpoint's parameters (one energy "
                       "fraction for all selected layers)")
                .range(0, 1, true),
            OptionSpec("--recalibrate-bn", "recalibrate_bn", T::Int,
                       "factorize: re-estimate BatchNorm statistics on N batches of --data's "
                       "training split after factorizing (no gradient steps)")
                .range(0, 1e6),
            OptionSpec("--whiten", "whiten", T::Int,
                       "factorize: data-aware factors that keep each layer's outputs on N batches "
                       "of --data's training split, not its weights (SVD-LLM whitening); the rank "
                       "rules then read the output energy")
                .range(0, 1e6),
            OptionSpec("--whiten-damp", "whiten_damp", T::Double,
                       "factorize: damping of the inputs' second moment, a fraction of its mean "
                       "diagonal (default 0.01)")
                .range(0, 1e6),
            no_fallback};
  }
  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    return factorize(source, o);
  }
  std::vector<OptionSpec> train_options() const override {
    using T = OptionSpec::Type;
    OptionSpec decay{"--frobenius-decay", "frobenius_decay", T::Double,
                     "Add (lambda/2)||U V^T||_F^2 for every factorized layer (Gram form); its "
                     "factors get no weight decay (default 0: off)"};
    decay.fallback = 0.0;
    decay.range(0, 1e6);
    OptionSpec attention{"--fd-attention", "fd_attention", T::Flag,
                         "Frobenius decay also on each head's W_Q W_K^T and W_V W_O (dense attention)"};
    attention.fallback = false;
    return {decay, attention};
  }
  std::vector<std::shared_ptr<train::TrainHook>> train_hooks(models::Model&,
                                                              const nlohmann::json& v) const override {
    const double lambda = v.value("frobenius_decay", 0.0);
    const bool attention = v.value("fd_attention", false);
    RECAST_CHECK(lambda >= 0, "--frobenius-decay: expected >= 0, found ", lambda);
    if (attention && lambda == 0) throw UsageError("--fd-attention: needs --frobenius-decay LAMBDA > 0");
    if (lambda == 0) return {};
    return {std::make_shared<FrobeniusDecay>(lambda, attention)};
  }
};

class Merge : public Recast {
 public:
  std::string name() const override { return "merge"; }
  std::string summary() const override {
    return "factorized layers -> dense weights U V^T (undoes factorize)";
  }
  Conversion convert(models::Model& source, const RecipeOptions& o) const override {
    return merge(source, o);
  }
};

RECAST_REGISTER_RECAST(Factorize);
RECAST_REGISTER_RECAST(Merge);

}  // namespace

std::vector<DenseLayer> factorizable_layers(const models::Model& model) {
  std::vector<DenseLayer> out;
  for (const auto& b : model.slots().built()) {
    if (b.recast.empty() && (b.slot.kind == models::SlotKind::Linear || b.slot.kind == models::SlotKind::Conv2d)) {
      out.push_back({b.slot.name, b.slot.transposed});
    }
  }
  return out;
}

std::vector<layers::FactorPair> attention_factor_pairs(const models::Model& model) {
  // Each dense projection's weight as W [out, in] (a view of the parameter).
  std::map<std::string, at::Tensor> dense;
  for (const auto& b : model.slots().built()) {
    if (!b.recast.empty() || b.slot.kind != models::SlotKind::Linear) continue;
    at::Tensor w = b.module->named_parameters(false)["weight"];
    dense[b.slot.name] = b.slot.transposed ? w.t() : w;
  }
  std::vector<layers::FactorPair> out;
  for (const auto& b : model.slots().built()) {
    const models::Slot& s = b.slot;
    if (s.kind != models::SlotKind::Attention || s.output.empty()) continue;
    const auto q = dense.find(s.query.slot), k = dense.find(s.key.slot);
    const auto v = dense.find(s.value.slot), o = dense.find(s.output);
    if (q == dense.end() || k == dense.end() || v == dense.end() || o == dense.end()) continue;
    const int64_t heads = s.attention.heads, kv = s.attention.kv_heads, d = s.attention.head_dim;
    // Rows row..row + n*d of W [out, in] -> [heads, in, d] (each kv head
    // repeated for the query heads of its group).
    auto heads_of = [&](const at::Tensor& w, int64_t row, int64_t n) {
      return w.narrow(0, row, n * d).reshape({n, d, w.size(1)}).transpose(1, 2).repeat_interleave(heads / n, 0);
    };
    // W_O [width, heads * d]: head h is columns h*d..(h+1)*d -> [heads, width, d].
    const at::Tensor wo = o->second.reshape({o->second.size(0), heads, d}).permute({1, 0, 2});
    auto param = [](const std::string& slot) { return slot + ".weight"; };
    std::vector<std::string> qk = {param(s.query.slot)}, vo = {param(s.value.slot)};
    if (s.key.slot != s.query.slot) qk.push_back(param(s.key.slot));
    if (s.output != s.value.slot) vo.push_back(param(s.output));
    out.push_back({s.name + " (QK^T)", heads_of(q->second, s.query.row, heads),
                   heads_of(k->second, s.key.row, kv), qk});
    out.push_back({s.name + " (VO)", heads_of(v->second, s.value.row, kv), wo, vo});
  }
  return out;
}

}  // namespace recast::recasts
