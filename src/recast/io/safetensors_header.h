#pragma once

// safetensors header: parsing and validation, without LibTorch.
//
// File layout: u64 little-endian N | N bytes of UTF-8 JSON | data area.
// The JSON maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the data area) plus an optional "__metadata__"
// string -> string map. Every rule below is checked before any tensor byte is
// touched; see docs/formats.md for the list and the reasons.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace recast::io {

// Every dtype the reference implementation names, in its order of increasing
// alignment. Which of them LibTorch can hold depends on its version (torch_compat.h).
enum class Dtype : uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

std::string_view dtype_name(Dtype dtype);
std::optional<Dtype> dtype_from_name(std::string_view name);
int dtype_bits(Dtype dtype);
// All names, comma-separated, for "unknown dtype" messages.
std::string known_dtype_names();

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data area
  uint64_t end = 0;

  uint64_t numel() const;  // validated not to overflow
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  std::vector<TensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t header_bytes = 0;  // N
  uint64_t data_offset = 0;   // 8 + N
  uint64_t data_bytes = 0;    // size of the data area

  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
};

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Parses and validates the header of a safetensors file whose full contents are
// [bytes, bytes + file_size) (only the first 8 + N bytes are read). `source`
// names the file in errors. Throws recast::Error on any violation.
Header parse_header(const uint8_t* bytes, size_t file_size, const std::string& source);

// numel x bits / 8 with overflow and sub-byte checks; nullopt on overflow or when
// the bit count is not a whole number of bytes.
std::optional<uint64_t> byte_size(Dtype dtype, const std::vector<int64_t>& shape);

}  // namespace recast::io
