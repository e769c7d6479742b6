#include "recast/io/checkpoint.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/json_strict.h"

#include <algorithm>
#include <cctype>
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

// Picks the weights file(s) of a checkpoint directory, as transformers does:
// model.safetensors first, then the sharded index.
std::string locate_weights(const std::string& dir) {
  if (is_regular_file(join(dir, kWeightsName))) return join(dir, kWeightsName);
  if (is_regular_file(join(dir, kIndexName))) return join(dir, kIndexName);
  for (const char* unsafe : {"pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt",
                             "model.pth", "model.ckpt"}) {
    if (fs::exists(join(dir, unsafe))) {
      throw Error(msg(dir, ": has ", unsafe, " but no ", kWeightsName,
                      "; recast reads safetensors only (pickle files can run arbitrary code). "
                      "Convert it where you trust it, e.g. "
                      "model.save_pretrained(dir, safe_serialization=True)"));
    }
  }
  std::vector<std::string> candidates;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (ends_with(e.path().filename().string(), ".safetensors") && fs::is_regular_file(e.path())) {
      candidates.push_back(e.path().string());
    }
  }
  if (candidates.size() == 1) return candidates[0];
  if (candidates.empty()) {
    throw Error(msg(dir, ": no ", kWeightsName, " or ", kIndexName, " in this directory"));
  }
  throw Error(msg(dir, ": ", candidates.size(), " .safetensors files but no ", kIndexName,
                  " saying how they fit together"));
}

}  // namespace

void check_shard_name(const std::string& shard, const std::string& index_path,
                      const std::string& tensor) {
  auto fail = [&](const std::string& rule) {
    throw Error(msg(index_path, ": weight_map[", quote(tensor), "] = ", quote(shard), ": ", rule));
  };
  if (shard.empty()) fail("empty shard name");
  if (shard.find('\0') != std::string::npos) fail("shard name contains a NUL character");
  if (shard.find('\\') != std::string::npos) fail("shard name contains a backslash");
  if (shard.front() == '/') fail("shard name is an absolute path");
  if (shard.size() >= 2 && std::isalpha(static_cast<unsigned char>(shard[0])) && shard[1] == ':') {
    fail("shard name has a drive letter");
  }
  for (const auto& part : fs::path(shard)) {
    if (part == "..") fail("shard name leaves the checkpoint directory ('..')");
  }
  if (!ends_with(shard, ".safetensors")) fail("shard name does not end in .safetensors");
}

TensorStore TensorStore::open(const std::string& path) {
  TensorStore store;
  store.path_ = path;
  std::string weights = is_directory(path) ? locate_weights(path) : path;
  if (!fs::exists(weights)) throw Error(msg(weights, ": no such file or directory"));

  if (ends_with(weights, ".index.json")) {
    store.sharded_ = true;
    const std::string dir = fs::path(weights).parent_path().string();
    nlohmann::json index = read_json_file(weights);
    if (!index.is_object()) {
      throw Error(msg(weights, ": expected a JSON object, found ", json_type_name(index)));
    }
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      throw Error(
          msg(weights, ": expected a \"weight_map\" object mapping tensor names to shard files"));
    }
    // shard file -> tensors the index assigns to it
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [tensor, shard] : map_it->items()) {
      if (!shard.is_string()) {
        throw Error(msg(weights, ": weight_map[", quote(tensor), "]: expected a file name, found ",
                        json_type_name(shard)));
      }
      const auto& name = shard.get_ref<const std::string&>();
      check_shard_name(name, weights, tensor);
      by_shard[name].push_back(tensor);
    }
    if (by_shard.empty()) throw Error(msg(weights, ": weight_map is empty"));
    // Check every shard exists before opening any.
    for (const auto& [shard, tensors] : by_shard) {
      if (!is_regular_file(join(dir, shard))) {
        throw Error(msg(weights, ": shard ", quote(shard), " (holding ", quote(tensors.front()),
                        ") does not exist in ", dir.empty() ? "." : dir));
      }
    }
    std::map<std::string, std::string> owner;  // tensor -> shard holding it
    for (const auto& [shard, tensors] : by_shard) {
      store.files_.push_back(SafetensorsFile::open(join(dir, shard)));
      const SafetensorsFile& file = store.files_.back();
      for (const TensorInfo& info : file.tensors()) {
        auto [it, fresh] = owner.emplace(info.name, shard);
        if (!fresh) {
          throw Error(msg(weights, ": tensor ", quote(info.name), " appears in shard ",
                          quote(it->second), " and in shard ", quote(shard)));
        }
        auto listed = map_it->find(info.name);
        if (listed == map_it->end()) {
          throw Error(msg(weights, ": tensor ", quote(info.name), " is in shard ", quote(shard),
                          " but not listed in weight_map"));
        }
        if (listed->get_ref<const std::string&>() != shard) {
          throw Error(msg(weights, ": tensor ", quote(info.name), " is listed for shard ",
                          quote(listed->get_ref<const std::string&>()), " but found in shard ",
                          quote(shard)));
        }
        store.entries_.push_back({&info, store.files_.size() - 1});
      }
      for (const std::string& tensor : tensors) {
        if (file.find(tensor) == nullptr) {
          throw Error(msg(weights, ": tensor ", quote(tensor), " is listed for shard ",
                          quote(shard), " but that shard does not contain it"));
        }
      }
    }
    auto meta = index.find("metadata");
    if (meta != index.end() && meta->is_object()) {
      auto total = meta->find("total_size");
      if (total != meta->end() && total->is_number_unsigned() &&
          total->get<uint64_t>() != store.total_bytes()) {
        log::warn(weights, ": metadata.total_size is ", total->get<uint64_t>(),
                  " but the shards hold ", store.total_bytes(), " bytes of tensors");
      }
    }
  } else {
    store.files_.push_back(SafetensorsFile::open(weights));
    for (const TensorInfo& info : store.files_.back().tensors())
      store.entries_.push_back({&info, 0});
  }
  std::sort(store.entries_.begin(), store.entries_.end(),
            [](const Entry& a, const Entry& b) { return a.info->name < b.info->name; });
  return store;
}

const TensorStore::Entry* TensorStore::find(std::string_view name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), name,
                             [](const Entry& e, std::string_view n) { return e.info->name < n; });
  return it != entries_.end() && it->info->name == name ? &*it : nullptr;
}

const Metadata& TensorStore::metadata() const {
  return files_.front().metadata();
}

uint64_t TensorStore::total_bytes() const {
  uint64_t n = 0;
  for (const Entry& e : entries_) n += e.info->nbytes();
  return n;
}

uint64_t TensorStore::total_elements() const {
  uint64_t n = 0;
  for (const Entry& e : entries_) n += e.info->numel();
  return n;
}

uint64_t parse_byte_size(const std::string& text) {
  static const std::regex pattern(R"(^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*$)",
                                  std::regex::icase);
  std::smatch m;
  if (!std::regex_match(text, m, pattern)) {
    throw UsageError(msg("expected a size such as 500MB, 5GB or 2GiB, found ", quote(text)));
  }
  double value = std::stod(m[1].str());
  std::string unit = m[2].str();
  std::transform(unit.begin(), unit.end(), unit.begin(), ::toupper);
  const std::map<std::string, double> scale = {{"", 1},
                                               {"B", 1},
                                               {"KB", 1e3},
                                               {"MB", 1e6},
                                               {"GB", 1e9},
                                               {"TB", 1e12},
                                               {"KIB", 1024.0},
                                               {"MIB", 1048576.0},
                                               {"GIB", 1073741824.0},
                                               {"TIB", 1099511627776.0}};
  double bytes = value * scale.at(unit);
  if (bytes < 1 || bytes > 1.8e19) {
    throw UsageError(msg("expected a size from 1 B to 18 EB, found ", quote(text)));
  }
  return static_cast<uint64_t>(bytes);
}

}  // namespace recast::io
