// recast inspect PATH [--json] [--summary]: what a checkpoint holds (tensors,
// dtypes, shapes, parameter count, metadata), read from the headers alone.

#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

namespace recast::cli {
namespace {

struct InspectOptions {
  std::string path;
  bool json = false;
  bool summary = false;
};

// What config.json says the model is (transformers: architectures + model_type;
// timm: architecture). Empty when there is no config.
nlohmann::json read_architecture(const std::string& path) {
  if (!io::is_directory(path)) return nullptr;
  auto config_path = (std::filesystem::path(path) / io::kConfigName).string();
  if (!io::is_regular_file(config_path)) return nullptr;
  nlohmann::json config = io::read_json_file(config_path);
  if (!config.is_object()) {
    throw Error(msg(config_path, ": expected a JSON object, found ", io::json_type_name(config)));
  }
  nlohmann::json out = nlohmann::json::object();
  auto archs = config.find("architectures");
  if (archs != config.end() && archs->is_array() && !archs->empty() && archs->front().is_string()) {
    out["architecture"] = archs->front();
  } else if (config.contains("architecture") && config["architecture"].is_string()) {
    out["architecture"] = config["architecture"];
  }
  if (config.contains("model_type") && config["model_type"].is_string()) {
    out["model_type"] = config["model_type"];
  }
  return out;
}

int run_inspect(const InspectOptions& o) {
  io::TensorStore store = io::TensorStore::open(o.path);
  nlohmann::json architecture = read_architecture(o.path);
  std::map<std::string, uint64_t> dtype_counts;
  for (const auto& e : store.entries()) dtype_counts[std::string(io::dtype_name(e.info->dtype))]++;

  if (o.json) {
    nlohmann::ordered_json out;
    out["path"] = o.path;
    out["format"] = store.sharded() ? "safetensors-sharded" : "safetensors";
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    for (const auto& f : store.files()) files.push_back(f.path());
    out["files"] = files;
    if (!architecture.is_null()) out["config"] = architecture;
    out["num_tensors"] = store.entries().size();
    out["parameters"] = store.total_elements();
    out["bytes"] = store.total_bytes();
    out["dtypes"] = dtype_counts;
    out["metadata"] = store.metadata();
    if (!o.summary) {
      nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
      for (const auto& e : store.entries()) {
        nlohmann::ordered_json t;
        t["name"] = e.info->name;
        t["dtype"] = std::string(io::dtype_name(e.info->dtype));
        t["shape"] = e.info->shape;
        t["numel"] = e.info->numel();
        t["bytes"] = e.info->nbytes();
        if (store.sharded())
          t["file"] = std::filesystem::path(store.files()[e.file].path()).filename().string();
        tensors.push_back(std::move(t));
      }
      out["tensors"] = std::move(tensors);
    }
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }

  std::printf("path:        %s\n", o.path.c_str());
  if (store.sharded()) {
    std::printf("format:      safetensors, %zu shards (%s)\n", store.files().size(),
                io::kIndexName);
  } else {
    std::printf("format:      safetensors (%s)\n", store.files().front().path().c_str());
  }
  if (!architecture.is_null() && !architecture.empty()) {
    std::string arch = architecture.value("architecture", std::string("?"));
    if (architecture.contains("model_type"))
      arch += " (model_type " + architecture["model_type"].get<std::string>() + ")";
    std::printf("config:      %s\n", arch.c_str());
  }
  std::printf("tensors:     %zu\n", store.entries().size());
  std::printf("parameters:  %s\n", with_commas(store.total_elements()).c_str());
  std::printf("size:        %s (%s bytes)\n", human_bytes(store.total_bytes()).c_str(),
              with_commas(store.total_bytes()).c_str());
  std::string dtypes;
  for (const auto& [name, count] : dtype_counts)
    dtypes += msg(dtypes.empty() ? "" : ", ", name, " x", count);
  std::printf("dtypes:      %s\n", dtypes.c_str());
  for (const auto& [key, value] : store.metadata()) {
    std::printf("metadata:    %s = %s\n", quote(key).c_str(), quote(value).c_str());
  }
  if (o.summary) return 0;

  size_t name_width = 4;
  for (const auto& e : store.entries())
    name_width = std::max(name_width, quote(e.info->name).size() - 2);
  name_width = std::min<size_t>(name_width, 80);
  std::printf("\n%-*s  %-7s  %-20s  %s\n", static_cast<int>(name_width), "NAME", "DTYPE", "SHAPE",
              store.sharded() ? "FILE" : "");
  for (const auto& e : store.entries()) {
    std::string name = quote(e.info->name);
    name = name.substr(1, name.size() - 2);
    std::string file = store.sharded()
                           ? std::filesystem::path(store.files()[e.file].path()).filename().string()
                           : "";
    std::printf("%-*s  %-7s  %-20s  %s\n", static_cast<int>(name_width), name.c_str(),
                std::string(io::dtype_name(e.info->dtype)).c_str(),
                shape_string(e.info->shape).c_str(), file.c_str());
  }
  return 0;
}

}  // namespace

Runner add_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", verb_info("inspect").summary);
  cmd->add_option("path", o->path, "A .safetensors file or a checkpoint directory")->required();
  cmd->add_flag("--json", o->json, "Print one JSON object instead of a table");
  cmd->add_flag("--summary", o->summary, "Totals only, no per-tensor rows");
  return [o] { return run_inspect(*o); };
}

}  // namespace recast::cli
