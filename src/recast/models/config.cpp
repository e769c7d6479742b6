#include "recast/models/config.h"

#include "recast/core/error.h"
#include "recast/io/json_strict.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace recast::models {

ConfigKey int_key(std::string name, nlohmann::json fallback, double min, double max) {
  ConfigKey k;
  k.name = std::move(name), k.type = KeyType::Int, k.fallback = std::move(fallback);
  k.min = min, k.max = max;
  return k;
}

ConfigKey double_key(std::string name, nlohmann::json fallback, double min, double max) {
  ConfigKey k = int_key(std::move(name), std::move(fallback), min, max);
  k.type = KeyType::Double;
  return k;
}

ConfigKey bool_key(std::string name, nlohmann::json fallback) {
  ConfigKey k;
  k.name = std::move(name), k.type = KeyType::Bool, k.fallback = std::move(fallback);
  return k;
}

ConfigKey string_key(std::string name, nlohmann::json fallback, std::vector<std::string> choices) {
  ConfigKey k;
  k.name = std::move(name), k.type = KeyType::String, k.fallback = std::move(fallback);
  k.choices = std::move(choices);
  return k;
}

ConfigKey any_key(std::string name) {
  ConfigKey k;
  k.name = std::move(name);
  return k;
}

ConfigKey ignored_key(std::string name) {
  ConfigKey k;
  k.name = std::move(name), k.read = false;
  return k;
}

ConfigKey default_only_key(std::string name, nlohmann::json value) {
  ConfigKey k;
  k.name = std::move(name), k.fallback = std::move(value), k.default_only = true;
  return k;
}

const ConfigKey* ConfigSpec::find(const std::string& name) const {
  for (const auto& k : keys) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

const std::vector<std::string>& transformers_common_keys() {
  // PretrainedConfig (transformers 4.x and 5.x): what save_pretrained writes
  // besides the family's own keys.
  static const std::vector<std::string> keys = {
      "_name_or_path", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset",
      "_attn_implementation_internal", "architectures", "auto_map", "model_type",
      "transformers_version", "torch_dtype", "dtype", "use_bfloat16", "torchscript",
      "return_dict", "output_hidden_states", "output_attentions", "tf_legacy_loss",
      "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
      "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder",
      "finetuning_task", "id2label", "label2id", "num_labels", "problem_type",
      "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id",
      "sep_token_id", "decoder_start_token_id", "task_specific_params", "use_cache",
      "gradient_checkpointing", "quantization_config", "max_length", "min_length",
      "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
      "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
      "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
      "num_return_sequences", "output_scores", "return_dict_in_generate",
      "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
      "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
      "output_router_logits", "use_return_dict", "base_model_tp_plan", "base_model_pp_plan",
      "tie_word_embeddings", "initializer_range", "attn_implementation",
      "experts_implementation", "per_layer_config", "name_or_path", "xla_device", "output_past",
      "epsilon_cutoff", "eta_cutoff", "encoder_repetition_penalty", "num_assistant_tokens",
      "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
      "target_lookbehind", "max_new_tokens", "min_new_tokens", "forced_decoder_ids",
      "penalty_alpha", "distributed_config", "ignore_keys_at_rope_validation",
      "transformers_weights"};
  return keys;
}

const std::vector<std::string>& timm_common_keys() {
  // timm's save_for_hf / push_to_hf_hub config.json.
  static const std::vector<std::string> keys = {
      "architecture", "num_classes", "num_features", "global_pool", "pretrained_cfg",
      "model_args", "label_names", "label_descriptions"};
  return keys;
}

ConfigView::ConfigView(const nlohmann::json& config, const ConfigSpec& spec)
    : config_(config), spec_(spec) {}

const nlohmann::json& ConfigView::raw(const std::string& key) const {
  static const nlohmann::json null;
  auto at = [&](const nlohmann::json& j) -> const nlohmann::json& {
    if (!j.is_object()) return null;
    auto it = j.find(key);
    return it == j.end() ? null : *it;
  };
  if (spec_.style == ConfigStyle::Transformers || key.rfind("recast_", 0) == 0) return at(config_);
  auto args = config_.find("model_args");
  if (args != config_.end()) {
    const auto& v = at(*args);
    if (!v.is_null()) return v;
  }
  // timm keeps num_classes and global_pool at the top level too.
  return at(config_);
}

const nlohmann::json& ConfigView::value(const std::string& key) const {
  const ConfigKey* k = spec_.find(key);
  RECAST_CHECK(k != nullptr, "config: the family reads an undeclared key '", key, "'");
  const auto& v = raw(key);
  return v.is_null() ? k->fallback : v;
}

namespace {

[[noreturn]] void bad_type(const std::string& key, const char* expected, const nlohmann::json& v) {
  throw Error(msg("config key '", key, "': expected ", expected, ", found ", io::json_type_name(v),
                  " ", v.dump()));
}

}  // namespace

int64_t ConfigView::i(const std::string& key) const {
  const auto& v = value(key);
  if (v.is_null()) throw Error(msg("config key '", key, "' is missing"));
  if (!v.is_number_integer()) bad_type(key, "an integer", v);
  return v.get<int64_t>();
}

double ConfigView::d(const std::string& key) const {
  const auto& v = value(key);
  if (v.is_null()) throw Error(msg("config key '", key, "' is missing"));
  if (!v.is_number()) bad_type(key, "a number", v);
  return v.get<double>();
}

bool ConfigView::b(const std::string& key) const {
  const auto& v = value(key);
  if (v.is_null()) throw Error(msg("config key '", key, "' is missing"));
  if (!v.is_boolean()) bad_type(key, "true or false", v);
  return v.get<bool>();
}

std::string ConfigView::s(const std::string& key) const {
  const auto& v = value(key);
  if (v.is_null()) throw Error(msg("config key '", key, "' is missing"));
  if (!v.is_string()) bad_type(key, "a string", v);
  return v.get<std::string>();
}

std::vector<int64_t> ConfigView::ints(const std::string& key) const {
  const auto& v = value(key);
  std::vector<int64_t> out;
  if (!v.is_array()) bad_type(key, "a list of integers", v);
  for (const auto& x : v) {
    if (!x.is_number_integer()) bad_type(key, "a list of integers", v);
    out.push_back(x.get<int64_t>());
  }
  return out;
}

std::string nearest_key(const std::string& name, const std::vector<std::string>& known) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  std::string best;
  size_t best_d = std::max<size_t>(3, name.size() / 3) + 1;
  for (const auto& k : known) {
    const size_t d = distance(name, k);
    if (d < best_d) best = k, best_d = d;
  }
  return best;
}

namespace {

void check_value(const ConfigKey& k, const nlohmann::json& v) {
  if (v.is_null() || !k.read) return;
  if (k.default_only) {
    if (v != k.fallback) {
      throw Error(msg("config key '", k.name, "': only the reference library's default (",
                      k.fallback.dump(), ") is supported, found ", v.dump()));
    }
    return;
  }
  auto range = [&](double x) {
    if (!(x >= k.min && x <= k.max)) {
      throw Error(msg("config key '", k.name, "': ", v.dump(), " is outside [", k.min, ", ",
                      k.max, "]"));
    }
  };
  switch (k.type) {
    case KeyType::Int:
      if (!v.is_number_integer()) bad_type(k.name, "an integer", v);
      range(static_cast<double>(v.get<int64_t>()));
      break;
    case KeyType::Double:
      if (!v.is_number()) bad_type(k.name, "a number", v);
      range(v.get<double>());
      break;
    case KeyType::Bool:
      if (!v.is_boolean()) bad_type(k.name, "true or false", v);
      break;
    case KeyType::String:
      if (!v.is_string()) bad_type(k.name, "a string", v);
      if (!k.choices.empty() &&
          std::find(k.choices.begin(), k.choices.end(), v.get<std::string>()) == k.choices.end()) {
        std::string known;
        for (const auto& c : k.choices) known += (known.empty() ? "" : ", ") + c;
        throw Error(msg("config key '", k.name, "': unsupported ", quote(v.get<std::string>()),
                        " (supported: ", known, ")"));
      }
      break;
    case KeyType::IntList:
      if (!v.is_array()) bad_type(k.name, "a list of integers", v);
      for (const auto& x : v) {
        if (!x.is_number_integer()) bad_type(k.name, "a list of integers", v);
        range(static_cast<double>(x.get<int64_t>()));
      }
      break;
    case KeyType::Object:
      if (!v.is_object()) bad_type(k.name, "an object", v);
      break;
    case KeyType::Any:
      break;
  }
}

void check_keys(const nlohmann::json& object, const std::string& where,
                const std::set<std::string>& known_set, bool allow_private) {
  const std::vector<std::string> known(known_set.begin(), known_set.end());
  for (const auto& [key, value] : object.items()) {
    if (known_set.count(key) || key.rfind("recast_", 0) == 0 || (allow_private && key[0] == '_')) {
      continue;
    }
    const std::string near = nearest_key(key, known);
    throw Error(msg("config key '", where, key, "' is not a key of this model",
                    near.empty() ? std::string() : msg(" (did you mean '", near, "'?)")));
  }
}

uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

}  // namespace

void validate_config(const nlohmann::json& config, const ConfigSpec& spec, uint64_t max_bytes) {
  if (!config.is_object()) throw Error("config: expected a JSON object");
  std::set<std::string> declared;
  for (const auto& k : spec.keys) declared.insert(k.name);
  if (spec.style == ConfigStyle::Transformers) {
    std::set<std::string> top = declared;
    for (const auto& k : transformers_common_keys()) top.insert(k);
    check_keys(config, "", top, true);
  } else {
    std::set<std::string> top(timm_common_keys().begin(), timm_common_keys().end());
    check_keys(config, "", top, false);
    auto args = config.find("model_args");
    if (args != config.end() && !args->is_null()) {
      if (!args->is_object()) bad_type("model_args", "an object", *args);
      check_keys(*args, "model_args.", declared, false);
    }
  }
  const ConfigView view(config, spec);
  for (const auto& k : spec.keys) check_value(k, view.raw(k.name));
  for (const auto& check : spec.checks) check(view);
  if (spec.parameters) {
    const double params = spec.parameters(view);
    const uint64_t limit = max_bytes > 0 ? max_bytes : physical_memory();
    if (limit > 0 && params * 4.0 > static_cast<double>(limit)) {
      throw Error(msg("config: about ", static_cast<int64_t>(params), " parameters (",
                      std::llround(params * 4.0 / 1e9), " GB in fp32) exceed this machine's ",
                      std::llround(static_cast<double>(limit) / 1e9), " GB of memory"));
    }
  }
}

// recast's own blocks ("recast_tcnn", "recast_factorized", ...) sit at the top
// level of every config, whatever the family's layout.
void set_config_value(nlohmann::json& config, ConfigStyle style, const std::string& key,
                      const nlohmann::json& value) {
  if (style == ConfigStyle::Transformers || key.rfind("recast_", 0) == 0) {
    config[key] = value;
  } else {
    config["model_args"][key] = value;
    if (key == "num_classes") config[key] = value;
  }
}

bool has_config_value(const nlohmann::json& config, ConfigStyle style, const std::string& key) {
  if (style == ConfigStyle::Transformers || key.rfind("recast_", 0) == 0) return config.contains(key);
  return config.contains("model_args") && config["model_args"].is_object() &&
         config["model_args"].contains(key);
}

}  // namespace recast::models
