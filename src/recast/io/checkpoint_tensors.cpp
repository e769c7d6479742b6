// The parts of checkpoint directories that touch tensors: reading them out of
// a TensorStore and writing (sharded) weights.

#include "recast/core/error.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

namespace fs = std::filesystem;

namespace recast::io {
namespace {

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

}  // namespace

at::Tensor TensorStore::tensor(std::string_view name, bool copy) const {
  const Entry* e = find(name);
  if (e == nullptr) throw Error(msg(path_, ": no tensor named ", quote(name)));
  return files_[e->file].tensor(*e->info, copy);
}

void TensorStore::release(std::string_view name) const {
  if (const Entry* e = find(name)) files_[e->file].release(*e->info);
}

NamedTensors TensorStore::load_all(bool copy) const {
  NamedTensors out;
  out.reserve(entries_.size());
  for (const Entry& e : entries_)
    out.emplace_back(e.info->name, files_[e.file].tensor(*e.info, copy));
  return out;
}

void save_weights(const std::string& dir, const NamedTensors& tensors, const Metadata& metadata,
                  uint64_t max_shard_bytes, const WriteProgress& on_write) {
  fs::create_directories(dir);
  // Greedy split in the given order, as transformers' split_torch_state_dict does.
  std::vector<NamedTensors> shards(1);
  uint64_t current = 0;
  for (const auto& named : tensors) {
    auto bytes = static_cast<uint64_t>(named.second.numel()) * named.second.element_size();
    if (!shards.back().empty() && current + bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(named);
    current += bytes;
  }
  std::set<std::string> keep;
  if (shards.size() == 1) {
    save_safetensors(join(dir, kWeightsName), tensors, metadata, on_write);
    keep.insert(kWeightsName);
  } else {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    std::map<std::string, std::string> sorted_map;
    uint64_t total = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      save_safetensors(join(dir, name), shards[i], metadata, on_write);
      keep.insert(name);
      for (const auto& [tensor_name, tensor] : shards[i]) {
        sorted_map[tensor_name] = name;
        total += static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
      }
    }
    for (const auto& [k, v] : sorted_map) weight_map[k] = v;
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                    {"weight_map", weight_map}};
    write_file_atomic(join(dir, kIndexName), index.dump(2) + "\n");
    keep.insert(kIndexName);
  }
  // Remove weights of an earlier save that the new layout does not use.
  static const std::regex stale(
      R"(^(model\.safetensors|model\.safetensors\.index\.json|model-[0-9]+-of-[0-9]+\.safetensors)$)");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (std::regex_match(name, stale) && !keep.count(name)) fs::remove(e.path());
  }
}

}  // namespace recast::io
