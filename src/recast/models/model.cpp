#include "recast/models/model.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#include <torch/torch.h>

#include <chrono>

#include <filesystem>
#include <mutex>
#include <set>

namespace fs = std::filesystem;

namespace recast::models {

Recorder::Recorder(const std::string& pattern) {
  try {
    pattern_ = std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw UsageError(
        msg("--dump: invalid regular expression ", quote(pattern), " (", e.what(), ")"));
  }
}

void Recorder::record(const std::string& name, const at::Tensor& value) {
  if (wants(name))
    tensors_.emplace_back(name, value.detach().to(at::kCPU, at::kFloat).contiguous());
}

Registry<ModelFactory>& model_registry() {
  static Registry<ModelFactory> registry("model");
  return registry;
}

const ModelFactory& factory_of(const std::string& arch) { return model_registry().get(arch).factory; }

namespace {

ConfigStyle style_of(const std::string& arch) { return factory_of(arch).style; }

// Validates, builds, and checks that every recast block found its layers.
ModelPtr build(const std::string& arch, const nlohmann::json& config) {
  const ModelFactory& factory = factory_of(arch);
  validate_config(config, factory.spec);
  ModelPtr model = factory.make(config);
  model->slots().finish();
  return model;
}

}  // namespace

void set_config_value(nlohmann::json& config, const std::string& arch, const std::string& key,
                      const nlohmann::json& value) {
  set_config_value(config, style_of(arch), key, value);
}

bool has_config_value(const nlohmann::json& config, const std::string& arch,
                      const std::string& key) {
  return has_config_value(config, style_of(arch), key);
}

// "key=value": the value is read as JSON when it parses, else as a string.
void apply_overrides(nlohmann::json& config, const std::string& arch,
                     const std::vector<std::string>& sets) {
  for (const std::string& kv : sets) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw UsageError(msg("--set ", quote(kv), ": expected key=value"));
    }
    std::string key = kv.substr(0, eq);
    std::string text = kv.substr(eq + 1);
    nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) value = text;
    set_config_value(config, arch, key, value);
  }
}

std::string arch_from_config(const nlohmann::json& config, const std::string& source) {
  if (!config.is_object()) throw Error(msg(source, ": expected a JSON object"));
  auto& registry = model_registry();
  if (config.contains("architecture") && config["architecture"].is_string()) {
    std::string arch = config["architecture"];
    // timm names carry a pretrained tag after a dot: "resnet50.a1_in1k".
    arch = arch.substr(0, arch.find('.'));
    if (!registry.contains(arch)) {
      throw Error(msg(source, ": timm architecture ", quote(arch), " is not supported (known: ",
                      registry.names().size(), " architectures; see 'recast list')"));
    }
    return arch;
  }
  if (config.contains("model_type") && config["model_type"].is_string()) {
    std::string type = config["model_type"];
    if (registry.contains(type) && style_of(type) == ConfigStyle::Transformers) return type;
    std::string supported;
    for (const auto& [name, item] : registry.items()) {
      if (item.factory.style == ConfigStyle::Transformers)
        supported += (supported.empty() ? "" : ", ") + name;
    }
    throw Error(msg(source, ": model_type ", quote(type),
                    " is not supported (supported: ", supported, ")"));
  }
  throw Error(msg(source,
                  ": neither \"model_type\" (transformers) nor \"architecture\" (timm) "
                  "says what the model is; pass --arch"));
}

std::string LoadReport::describe(size_t max_names) const {
  std::string out;
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    if (names.empty()) return;
    out += msg(out.empty() ? "" : "; ", names.size(), " ", what, ": ");
    for (size_t i = 0; i < names.size() && i < max_names; ++i) out += (i ? ", " : "") + names[i];
    if (names.size() > max_names) out += msg(", ... (", names.size() - max_names, " more)");
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("mis-shaped", mismatched);
  return out;
}

LoadReport load_weights(Model& model, const io::TensorStore& store, bool allow_cast, bool adopt) {
  LoadReport report;
  std::set<std::string> expected;
  std::set<std::string> tied;
  for (const auto& name : model.tied_names()) tied.insert(name);
  torch::NoGradGuard no_grad;
  auto load_one = [&](const std::string& name, at::Tensor& target) {
    expected.insert(name);
    const auto* entry = store.find(name);
    if (entry == nullptr) {
      if (!tied.count(name)) report.missing.push_back(name);
      return;
    }
    const auto& info = *entry->info;
    if (at::IntArrayRef(info.shape) != target.sizes()) {
      report.mismatched.push_back(msg(name, ": expected ", shape_string(target.sizes()), " found ",
                                      shape_string(info.shape)));
      return;
    }
    at::Tensor source = store.tensor(name);
    if (source.scalar_type() != target.scalar_type()) {
      bool both_float = source.is_floating_point() && target.is_floating_point();
      if (!allow_cast && !both_float) {
        report.mismatched.push_back(
            msg(name, ": expected dtype ", target.scalar_type(), " found ", source.scalar_type()));
        return;
      }
    }
    if (adopt && source.scalar_type() == target.scalar_type() && source.device() == target.device()) {
      target.set_data(source);  // the mapped pages themselves: no copy
      report.adopted_bytes += source.nbytes();
    } else {
      target.copy_(source);
      report.copied_bytes += source.nbytes();
      source = at::Tensor();
      store.release(name);  // the copy is all that is kept
    }
  };
  for (auto& item : model.named_parameters(/*recurse=*/true)) load_one(item.key(), item.value());
  for (auto& item : model.named_buffers(/*recurse=*/true)) load_one(item.key(), item.value());
  for (const auto& entry : store.entries()) {
    const std::string& name = entry.info->name;
    if (!expected.count(name) && !model.ignorable(name)) report.unexpected.push_back(name);
  }
  return report;
}

ScopedDefaultDtype::ScopedDefaultDtype(std::optional<c10::ScalarType> dtype) : before_(c10::get_default_dtype()) {
  if (dtype) c10::set_default_dtype(c10::scalarTypeToTypeMeta(*dtype));
}

ScopedDefaultDtype::~ScopedDefaultDtype() { c10::set_default_dtype(before_); }

ModelPtr load_model(const std::string& path, const LoadOptions& options) {
  nlohmann::json config = nlohmann::json::object();
  std::string arch = options.arch;
  if (const std::string problem = io::path_problem(path); !problem.empty()) {
    throw Error(msg(path, ": ", problem, "; expected a checkpoint directory or weights file"));
  }
  const bool dir = io::is_directory(path);
  const std::string config_path = (fs::path(path) / io::kConfigName).string();
  if (dir && io::is_regular_file(config_path)) {
    config = io::read_json_file(config_path);
    if (arch.empty()) arch = arch_from_config(config, config_path);
  } else if (arch.empty()) {
    throw UsageError(msg(path, ": ",
                         dir ? "no config.json in this directory" : "a bare weights file",
                         "; pass --arch NAME (see 'recast list')"));
  }
  auto& registry = model_registry();
  const auto& factory = registry.get(arch).factory;
  if (factory.style == ConfigStyle::Transformers) {
    if (!config.contains("model_type")) config["model_type"] = arch;
  } else if (!config.contains("architecture")) {
    config["architecture"] = arch;
  }
  apply_overrides(config, arch, options.set);

  const auto started = std::chrono::steady_clock::now();
  ModelPtr model;
  try {
    {
      // Built in the requested dtype (the family's fresh init included), so
      // the parameters never exist in fp32 first.
      const ScopedDefaultDtype in_dtype(options.dtype);
      model = build(arch, config);
    }
    if (options.dtype) {
      // Floating-point tensors only (Module::to would convert integer buffers
      // such as num_batches_tracked too).
      torch::NoGradGuard no_grad;
      auto convert = [&](at::Tensor& t) {
        if (t.is_floating_point() && t.scalar_type() != *options.dtype) t.set_data(t.to(*options.dtype));
      };
      for (auto& p : model->named_parameters(true)) convert(p.value());
      for (auto& b : model->named_buffers(true)) convert(b.value());
    }
  } catch (const Error& e) {
    throw e.with_context(dir ? config_path : path);
  }
  io::TensorStore store = io::TensorStore::open(path);
  LoadReport report = load_weights(*model, store, /*allow_cast=*/false, /*adopt=*/true);
  if (!report.ok()) {
    std::string text = msg(path, ": weights do not fit ", arch, ": ", report.describe());
    if (options.strict) throw Error(text);
    log::warn(text);
  }
  model->set_metadata(store.metadata());
  model->eval();
  log::debug("loaded ", path, " (", arch, "): ", report.adopted_bytes, " bytes of weights used in place, ",
             report.copied_bytes, " copied, in ",
             std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), " s");
  return model;
}

ModelPtr create_model(const std::string& arch, const nlohmann::json& overrides) {
  nlohmann::json config = overrides.is_object() ? overrides : nlohmann::json::object();
  const auto& factory = model_registry().get(arch).factory;
  config[factory.style == ConfigStyle::Transformers ? "model_type" : "architecture"] = arch;
  ModelPtr model = build(arch, config);
  model->eval();
  return model;
}

io::NamedTensors state_dict_for_save(const Model& model) {
  std::set<std::string> tied;
  for (const auto& name : model.tied_names()) tied.insert(name);
  io::NamedTensors out;
  for (const auto& item : model.named_parameters(true)) {
    if (!tied.count(item.key())) out.emplace_back(item.key(), item.value().detach());
  }
  for (const auto& item : model.named_buffers(true)) {
    if (!tied.count(item.key())) out.emplace_back(item.key(), item.value().detach());
  }
  return out;
}

void save_model(const Model& model, const std::string& dir, uint64_t max_shard_bytes) {
  fs::create_directories(dir);
  io::save_weights(dir, state_dict_for_save(model), model.metadata(), max_shard_bytes);
  io::write_file_atomic((fs::path(dir) / io::kConfigName).string(), model.config().dump(2) + "\n");
}

namespace {

const nlohmann::json* find_key(const nlohmann::json& c, const char* key) {
  auto it = c.find(key);
  return it == c.end() || it->is_null() ? nullptr : &*it;
}

[[noreturn]] void bad_key(const char* key, const char* expected, const nlohmann::json& found) {
  throw Error(msg("config key '", key, "': expected ", expected, ", found ",
                  io::json_type_name(found), " ", found.dump()));
}

}  // namespace

// One getter for every config type: `is` checks the JSON type, `expected`
// names it in the error.
template <typename T>
T cfg_value(const nlohmann::json& c, const char* key, const std::optional<T>& fallback,
            bool (nlohmann::json::*is)() const noexcept, const char* expected) {
  const auto* v = find_key(c, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    throw Error(msg("config key '", key, "' is missing"));
  }
  if (!(v->*is)()) bad_key(key, expected, *v);
  return v->get<T>();
}

int64_t cfg_int(const nlohmann::json& c, const char* key, std::optional<int64_t> fallback) {
  return cfg_value(c, key, fallback, &nlohmann::json::is_number_integer, "an integer");
}

double cfg_double(const nlohmann::json& c, const char* key, std::optional<double> fallback) {
  return cfg_value(c, key, fallback, &nlohmann::json::is_number, "a number");
}

bool cfg_bool(const nlohmann::json& c, const char* key, std::optional<bool> fallback) {
  return cfg_value(c, key, fallback, &nlohmann::json::is_boolean, "true or false");
}

std::string cfg_string(const nlohmann::json& c, const char* key,
                       std::optional<std::string> fallback) {
  return cfg_value(c, key, fallback, &nlohmann::json::is_string, "a string");
}

c10::Device Model::device() const {
  const auto params = parameters();
  return params.empty() ? c10::Device(c10::kCPU) : params.front().device();
}

}  // namespace recast::models
