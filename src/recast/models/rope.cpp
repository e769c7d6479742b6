#include "recast/models/rope.h"

#include "recast/core/error.h"

#include <cmath>
#include <set>

namespace recast::models {
namespace {

// Python's `number / tensor` is tensor.reciprocal() * number (two roundings,
// not one division): kept so the frequencies match bit for bit.
at::Tensor rdiv(double number, const at::Tensor& t) { return t.reciprocal() * number; }

// yarn's get_mscale
double mscale_of(double scale, double m = 1.0) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

}  // namespace

Rope read_rope(const nlohmann::json& config, int64_t head_dim, int64_t max_positions,
               double default_theta) {
  Rope r;
  r.dim = head_dim, r.max_positions = max_positions, r.original_max_positions = max_positions;
  auto present = [&](const char* key) {
    auto it = config.find(key);
    return it != config.end() && !it->is_null() && !(it->is_object() && it->empty());
  };
  const char* where = present("rope_scaling") ? "rope_scaling" : present("rope_parameters") ? "rope_parameters" : nullptr;
  static const nlohmann::json empty = nlohmann::json::object();
  const nlohmann::json& p = where ? config.at(where) : empty;
  if (where && !p.is_object()) throw Error(msg("config key '", where, "': expected an object, found ", p.dump()));
  static const std::set<std::string> known = {
      "rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "low_freq_factor",
      "high_freq_factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
      "truncate", "partial_rotary_factor"};
  for (const auto& item : p.items()) {
    RECAST_CHECK(known.count(item.key()), "config key '", where, ".", item.key(),
                 "': not a RoPE parameter recast reads (known: rope_type, rope_theta, factor, "
                 "original_max_position_embeddings, low_freq_factor, high_freq_factor, attention_factor, "
                 "beta_fast, beta_slow, mscale, mscale_all_dim, truncate)");
  }
  auto key = [&](const char* k) { return msg("config key '", where ? where : "rope_parameters", ".", k, "'"); };
  // A number in the rope object (null: absent).
  auto number = [&](const char* k) -> std::optional<double> {
    auto it = p.find(k);
    if (it == p.end() || it->is_null()) return std::nullopt;
    RECAST_CHECK(it->is_number() && !it->is_boolean(), key(k), ": expected a number, found ", it->dump());
    const double v = it->get<double>();
    RECAST_CHECK(std::isfinite(v), key(k), ": expected a finite number, found ", it->dump());
    return v;
  };
  auto required = [&](const char* k) {
    auto v = number(k);
    RECAST_CHECK(v.has_value(), key(k), ": missing, required by rope_type ", quote(r.type));
    return *v;
  };
  for (const char* k : {"rope_type", "type"}) {
    if (auto it = p.find(k); it != p.end() && !it->is_null()) {
      RECAST_CHECK(it->is_string(), key(k), ": expected a string, found ", it->dump());
      r.type = it->get<std::string>();
      break;
    }
  }
  static const std::set<std::string> types = {"default", "linear", "dynamic", "yarn", "llama3"};
  RECAST_CHECK(types.count(r.type), key("rope_type"), ": ", quote(r.type),
               " is not supported (supported: default, linear, dynamic, yarn, llama3)");
  if (auto t = number("rope_theta")) {
    r.theta = *t;
  } else if (auto it = config.find("rope_theta"); it != config.end() && !it->is_null()) {
    RECAST_CHECK(it->is_number() && !it->is_boolean(), "config key 'rope_theta': expected a number, found ", it->dump());
    r.theta = it->get<double>();
  } else {
    r.theta = default_theta;
  }
  RECAST_CHECK(r.theta > 1, key("rope_theta"), ": expected a base > 1, found ", r.theta);
  if (auto f = number("partial_rotary_factor")) {
    RECAST_CHECK(*f == 1.0, key("partial_rotary_factor"), ": only 1.0 is supported, found ", *f);
  }
  if (auto it = config.find("original_max_position_embeddings"); it != config.end() && !it->is_null()) {
    RECAST_CHECK(it->is_number_integer() && it->get<int64_t>() >= 1,
                 "config key 'original_max_position_embeddings': expected a positive integer, found ", it->dump());
    r.original_max_positions = it->get<int64_t>();
  } else if (auto o = number("original_max_position_embeddings")) {
    RECAST_CHECK(*o >= 1 && *o == std::floor(*o), key("original_max_position_embeddings"),
                 ": expected a positive integer, found ", *o);
    r.original_max_positions = static_cast<int64_t>(*o);
  }
  if (r.type == "linear" || r.type == "dynamic" || r.type == "llama3") r.factor = required("factor");
  if (r.type == "yarn") {
    r.factor = number("factor").value_or(static_cast<double>(max_positions) / r.original_max_positions);
    r.attention_factor = number("attention_factor");
    r.mscale = number("mscale"), r.mscale_all_dim = number("mscale_all_dim");
    // transformers: `get("beta_fast") or 32`
    r.beta_fast = number("beta_fast").value_or(0);
    r.beta_slow = number("beta_slow").value_or(0);
    if (r.beta_fast == 0) r.beta_fast = 32.0;
    if (r.beta_slow == 0) r.beta_slow = 1.0;
    if (auto it = p.find("truncate"); it != p.end() && !it->is_null()) {
      RECAST_CHECK(it->is_boolean(), key("truncate"), ": expected true or false, found ", it->dump());
      r.truncate = it->get<bool>();
    }
  }
  if (r.type == "llama3") {
    r.low_freq_factor = required("low_freq_factor");
    r.high_freq_factor = required("high_freq_factor");
    RECAST_CHECK(r.high_freq_factor > r.low_freq_factor && r.low_freq_factor > 0, key("high_freq_factor"),
                 ": expected high_freq_factor > low_freq_factor > 0, found ", r.high_freq_factor, " and ",
                 r.low_freq_factor);
  }
  if (r.type != "default") RECAST_CHECK(r.factor > 0, key("factor"), ": expected a positive number, found ", r.factor);
  return r;
}

std::pair<at::Tensor, double> Rope::frequencies(int64_t seq_len, at::Device device) const {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor exponents = at::arange(0, dim, 2, f32.dtype(at::kLong)).to(at::kFloat) / dim;
  auto inverse = [&](double base) { return at::pow(base, exponents).reciprocal(); };
  if (type == "default") return {inverse(theta), 1.0};
  if (type == "linear") return {inverse(theta) / factor, 1.0};
  if (type == "dynamic") {
    const double d = static_cast<double>(dim) / static_cast<double>(dim - 2);
    if (seq_len <= max_positions) {
      // At construction (transformers' seq_len = max_position_embeddings), in doubles.
      const double base =
          theta * std::pow(factor * static_cast<double>(max_positions) / static_cast<double>(max_positions) -
                               (factor - 1),
                           d);
      return {inverse(base), 1.0};
    }
    // Recomputed in the forward from the tensor max(position_ids) + 1: fp32.
    const at::Tensor s = at::scalar_tensor(static_cast<double>(seq_len), f32);
    const at::Tensor base = at::pow(s * factor / max_positions - (factor - 1), d) * theta;
    return {at::pow(base, exponents).reciprocal(), 1.0};
  }
  if (type == "yarn") {
    double scale = 1.0;
    if (attention_factor) {
      scale = *attention_factor;
    } else if (mscale.value_or(0) != 0 && mscale_all_dim.value_or(0) != 0) {
      scale = mscale_of(factor, *mscale) / mscale_of(factor, *mscale_all_dim);
    } else {
      scale = mscale_of(factor);
    }
    const double original = static_cast<double>(original_max_positions);
    auto correction = [&](double rotations) {
      return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(theta));
    };
    double low = correction(beta_fast), high = correction(beta_slow);
    if (truncate) low = std::floor(low), high = std::ceil(high);
    low = std::max(low, 0.0), high = std::min(high, static_cast<double>(dim - 1));
    if (low == high) high += 0.001;
    const at::Tensor ramp =
        ((at::arange(dim / 2, at::TensorOptions().dtype(at::kFloat)) - low) / (high - low)).clamp(0, 1).to(device);
    const at::Tensor extrapolation_factor = 1 - ramp;
    const at::Tensor pos = at::pow(theta, exponents);
    const at::Tensor extrapolation = pos.reciprocal(), interpolation = (pos * factor).reciprocal();
    return {interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor, scale};
  }
  // llama3
  const at::Tensor inv = inverse(theta);
  const double original = static_cast<double>(original_max_positions);
  const double low_wavelen = original / low_freq_factor, high_wavelen = original / high_freq_factor;
  const at::Tensor wavelen = rdiv(2 * M_PI, inv);
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv / factor, inv);
  const at::Tensor smooth = (rdiv(original, wavelen) - low_freq_factor) / (high_freq_factor - low_freq_factor);
  const at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
  const at::Tensor medium = (wavelen < high_wavelen).logical_not() & (wavelen > low_wavelen).logical_not();
  return {at::where(medium, smoothed, scaled), 1.0};
}

}  // namespace recast::models
