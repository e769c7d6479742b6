#pragma once

// safetensors files as at::Tensor: a memory-mapped, fully validated reader
// (tensors are zero-copy views of the mapping where alignment allows) and an
// atomic, deterministic writer.

#include "recast/io/file.h"
#include "recast/io/safetensors_header.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

// Declared, not included: this header (and the `recast` front binary that
// inspects checkpoints) does not depend on LibTorch. The definitions that touch
// tensors live in safetensors.cpp; the header parsing in safetensors_file.cpp.
namespace at {
class Tensor;
}
namespace c10 {
enum class ScalarType : int8_t;
}

namespace recast::io {

using Metadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The LibTorch scalar type of a safetensors dtype (nullopt when this LibTorch
// has none, e.g. F8_* before 2.1), and back.
std::optional<c10::ScalarType> to_scalar_type(Dtype dtype);
std::optional<Dtype> from_scalar_type(c10::ScalarType type);

class SafetensorsFile {
 public:
  // Maps and validates the file; refuses pickle / TorchScript / other formats.
  // No tensor data is read.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const Header& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const Metadata& metadata() const { return header_.metadata; }
  const TensorInfo* find(std::string_view name) const { return header_.find(name); }

  // A tensor by name: a view of the mapping (kept alive by the tensor), or an
  // owned copy when `copy` is set or the data is not aligned for its dtype.
  // Throws if the name is absent, the dtype has no LibTorch type, or a BOOL
  // tensor holds bytes other than 0 and 1.
  at::Tensor tensor(std::string_view name, bool copy = false) const;
  at::Tensor tensor(const TensorInfo& info, bool copy = false) const;
  // Every tensor, in name order.
  NamedTensors load_all(bool copy = false) const;
  // Drops the tensor's resident pages (after it was copied out).
  void release(const TensorInfo& info) const { file_->release(header_.data_offset + info.begin, info.nbytes()); }

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> file, Header header)
      : file_(std::move(file)), header_(std::move(header)) {}
  std::shared_ptr<MappedFile> file_;
  Header header_;
};

// Builds the header bytes (JSON padded with spaces to a multiple of 8) for the
// tensors in write order; exposed for tests.
std::string serialize_header(const std::vector<TensorInfo>& ordered, const Metadata& metadata,
                             const std::string& path);

// Writes tensors atomically. Order in the file: by dtype alignment (largest
// first), then name, as the reference writer does, so output is deterministic
// and every tensor is aligned. Tensors may live on any device and be
// non-contiguous. Rejects duplicate names, the reserved name "__metadata__",
// and dtypes safetensors cannot hold.
// `on_write(bytes)` is called after each tensor's data is written (progress).
using WriteProgress = std::function<void(uint64_t bytes)>;
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const Metadata& metadata = {}, const WriteProgress& on_write = {});

}  // namespace recast::io
