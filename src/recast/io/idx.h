#pragma once

// IDX files (MNIST / Fashion-MNIST), raw or gzip-compressed, fully validated:
// magic, element type, rank, sizes x element size == payload bytes (overflow
// checked, no trailing bytes), and for classification sets equal counts and
// labels in range. Every error names the file; a truncated or corrupt file is
// never read as garbage.

#include <cstdint>
#include <string>
#include <vector>

namespace recast::io {

struct IdxArray {
  uint8_t type = 0;           // 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
  std::vector<int64_t> dims;  // big-endian u32 sizes from the header
  std::vector<uint8_t> data;  // payload as stored (big-endian for multi-byte types)
};

// Reads a whole IDX file (gzip detected by its magic). `max_bytes` caps the
// decompressed size.
IdxArray read_idx(const std::string& path, uint64_t max_bytes = 4ULL << 30);

struct ImageClassificationSet {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> images;  // count x rows x cols, row-major
  std::vector<uint8_t> labels;  // count, each < num_classes
};

// An images file (magic 0x00000803: u8, rank 3) with its labels file
// (0x00000801: u8, rank 1).
ImageClassificationSet read_idx_classification(const std::string& images_path,
                                               const std::string& labels_path,
                                               int num_classes = 10);

}  // namespace recast::io
