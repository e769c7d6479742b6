#pragma once

// Declared configs: each family lists the config keys it reads (type, default,
// range, choices) and the ones it accepts without reading (dropouts,
// generation settings, bookkeeping), once, in a table. The config from
// config.json + --set is validated against that table as a whole before
// anything is allocated: an unknown key is refused naming the nearest known
// one, a value of the wrong type or outside its range names the key, and the
// family's cross-key checks (divisibility, derived sizes) and its parameter
// estimate run before a tensor exists.
//
// ConfigView hides where a family keeps its keys: transformers puts them at
// the top level of config.json, timm under "model_args" (with num_classes
// and global_pool also at the top level). recast's own blocks ("recast_*")
// sit at the top level whatever the layout.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace recast::models {

// How a family's config.json is laid out: transformers' (model_type +
// top-level keys) or timm's (architecture + defaults + model_args).
enum class ConfigStyle { Transformers, Timm };

enum class KeyType { Int, Double, Bool, String, IntList, Object, Any };

struct ConfigKey {
  std::string name;
  KeyType type = KeyType::Any;
  nlohmann::json fallback;  // the family's default (null: none, the key may be absent)
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices;  // strings: the accepted values (empty: any)
  bool read = true;                  // false: accepted, not used by recast
  bool default_only = false;         // only `fallback` (or absence) is supported
};

// Shorthands for the tables.
ConfigKey int_key(std::string name, nlohmann::json fallback, double min, double max);
ConfigKey double_key(std::string name, nlohmann::json fallback, double min, double max);
ConfigKey bool_key(std::string name, nlohmann::json fallback);
ConfigKey string_key(std::string name, nlohmann::json fallback, std::vector<std::string> choices = {});
// Any JSON value, read by the family itself (checked in its checks).
ConfigKey any_key(std::string name);
// Accepted and ignored (any JSON value).
ConfigKey ignored_key(std::string name);
// A key of the reference library whose other values recast does not build:
// absent, null or `value` only.
ConfigKey default_only_key(std::string name, nlohmann::json value);

class ConfigView;

struct ConfigSpec {
  ConfigStyle style = ConfigStyle::Transformers;
  std::vector<ConfigKey> keys;
  // Cross-key checks (divisibility, consistency); throw Error naming the keys.
  std::vector<std::function<void(const ConfigView&)>> checks;
  // Parameters the config would allocate (an estimate; 0: not estimated).
  std::function<double(const ConfigView&)> parameters;

  const ConfigKey* find(const std::string& name) const;
};

// Keys every transformers config may carry (PretrainedConfig's own:
// architectures, id2label, generation defaults, bookkeeping), all ignored
// unless a family declares them itself; keys starting with "_" (private
// bookkeeping) are accepted too.
const std::vector<std::string>& transformers_common_keys();
// Top-level keys of a timm config.json besides model_args.
const std::vector<std::string>& timm_common_keys();

// A config as its family reads it. Values come from the config, else the
// declared default; reading an undeclared key is a programming error.
class ConfigView {
 public:
  ConfigView(const nlohmann::json& config, const ConfigSpec& spec);

  const nlohmann::json& json() const { return config_; }
  const ConfigSpec& spec() const { return spec_; }
  // The value stored for `key` in the family's layout (null when absent).
  const nlohmann::json& raw(const std::string& key) const;
  bool has(const std::string& key) const { return !raw(key).is_null(); }

  int64_t i(const std::string& key) const;
  double d(const std::string& key) const;
  bool b(const std::string& key) const;
  std::string s(const std::string& key) const;
  std::vector<int64_t> ints(const std::string& key) const;

 private:
  const nlohmann::json& value(const std::string& key) const;  // raw, else the default
  const nlohmann::json& config_;
  const ConfigSpec& spec_;
};

// Refuses, with one line naming the key: an unknown key (with the nearest
// known one), a value of the wrong type, outside its range or choices; then
// runs the family's checks and its parameter estimate against `max_bytes`
// (fp32 weights; 0: this machine's physical memory).
void validate_config(const nlohmann::json& config, const ConfigSpec& spec, uint64_t max_bytes = 0);

// The declared key closest to `name` (edit distance), "" when none is close.
std::string nearest_key(const std::string& name, const std::vector<std::string>& known);

// Config edits in the family's layout (timm: model_args; recast_* at the top).
void set_config_value(nlohmann::json& config, ConfigStyle style, const std::string& key,
                      const nlohmann::json& value);
bool has_config_value(const nlohmann::json& config, ConfigStyle style, const std::string& key);

}  // namespace recast::models
