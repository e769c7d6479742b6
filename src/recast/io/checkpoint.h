#pragma once

// Weights of a checkpoint: one safetensors file, or a directory holding
// model.safetensors or shards listed by model.safetensors.index.json (the layout
// transformers and huggingface_hub write).

#include "recast/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace recast::io {

inline constexpr const char* kWeightsName = "model.safetensors";
inline constexpr const char* kIndexName = "model.safetensors.index.json";
inline constexpr const char* kConfigName = "config.json";

class TensorStore {
 public:
  // `path` is a .safetensors file or a checkpoint directory. Everything is
  // validated (every shard's header, the index against the shards); no tensor
  // data is read.
  static TensorStore open(const std::string& path);
  // Entries point into files(): movable, not copyable.
  TensorStore(TensorStore&&) = default;
  TensorStore& operator=(TensorStore&&) = default;
  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  const std::string& path() const { return path_; }
  bool sharded() const { return sharded_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }

  struct Entry {
    const TensorInfo* info;
    size_t file;  // index into files()
  };
  // Every tensor, in name order.
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(std::string_view name) const;
  at::Tensor tensor(std::string_view name, bool copy = false) const;
  NamedTensors load_all(bool copy = false) const;
  // Drops the named tensor's resident pages of the mapping (it was copied
  // out): loading into another dtype holds one copy, not two.
  void release(std::string_view name) const;

  // The first file's __metadata__ (transformers writes {"format": "pt"} in each).
  const Metadata& metadata() const;
  uint64_t total_bytes() const;
  uint64_t total_elements() const;

 private:
  TensorStore() = default;
  std::string path_;
  bool sharded_ = false;
  std::vector<SafetensorsFile> files_;
  std::vector<Entry> entries_;
};

// Writes `tensors` into checkpoint directory `dir` (created if needed): one
// model.safetensors when they fit in `max_shard_bytes`, else
// model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json,
// written last as the commit marker. Stale weight files of the other layout are
// removed afterwards. Every file is written atomically.
void save_weights(const std::string& dir, const NamedTensors& tensors,
                  const Metadata& metadata = {{"format", "pt"}},
                  uint64_t max_shard_bytes = 5'000'000'000ULL, const WriteProgress& on_write = {});

// Parses a size such as "5GB", "500MB", "2GiB" or "1048576"; throws UsageError.
uint64_t parse_byte_size(const std::string& text);

// Validates the shard file name given in an index (relative, no "..", no
// drive or root, ends in .safetensors); throws naming index and entry.
void check_shard_name(const std::string& shard, const std::string& index_path,
                      const std::string& tensor);

}  // namespace recast::io
