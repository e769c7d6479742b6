#include "recast/io/idx.h"

#include "recast/core/error.h"

#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <memory>

namespace recast::io {
namespace {

int element_size(uint8_t type) {
  switch (type) {
    case 0x08:
    case 0x09: return 1;
    case 0x0B: return 2;
    case 0x0C:
    case 0x0D: return 4;
    case 0x0E: return 8;
    default: return 0;
  }
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::vector<uint8_t> read_gzip(const std::string& path, uint64_t max_bytes) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> gz(gzopen(path.c_str(), "rb"), gzclose);
  if (!gz) throw Error(msg(path, ": cannot open"));
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  for (;;) {
    int n = gzread(gz.get(), buf, sizeof buf);
    if (n < 0) {
      int code = 0;
      const char* what = gzerror(gz.get(), &code);
      throw Error(msg(path, ": corrupt gzip data (", what, ")"));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
    if (out.size() > max_bytes)
      throw Error(msg(path, ": decompresses to more than ", max_bytes, " bytes"));
  }
  // gzread reports a cut-off stream as a plain end of file: ask zlib whether
  // the stream ended properly.
  int code = 0;
  const char* what = gzerror(gz.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END) {
    throw Error(msg(path, ": corrupt gzip data (", what, ")"));
  }
  if (!gzeof(gz.get())) throw Error(msg(path, ": gzip stream ended early"));
  return out;
}

std::vector<uint8_t> read_all(const std::string& path, uint64_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(msg(path, ": cannot open"));
  unsigned char magic[2] = {0, 0};
  in.read(reinterpret_cast<char*>(magic), 2);
  if (in.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    in.close();
    return read_gzip(path, max_bytes);
  }
  in.clear();
  in.seekg(0);
  std::vector<uint8_t> out((std::istreambuf_iterator<char>(in)), {});
  if (out.size() > max_bytes) throw Error(msg(path, ": larger than ", max_bytes, " bytes"));
  return out;
}

}  // namespace

IdxArray read_idx(const std::string& path, uint64_t max_bytes) {
  std::vector<uint8_t> bytes = read_all(path, max_bytes);
  if (bytes.size() < 4)
    throw Error(msg(path, ": ", bytes.size(), " bytes, too short for an IDX header"));
  const uint32_t magic = (uint32_t(bytes[0]) << 24) | (uint32_t(bytes[1]) << 16) |
                         (uint32_t(bytes[2]) << 8) | bytes[3];
  IdxArray out;
  out.type = bytes[2];
  const int rank = bytes[3];
  const int size = element_size(out.type);
  if (bytes[0] != 0 || bytes[1] != 0 || size == 0 || rank < 1 || rank > 8) {
    throw Error(msg(path, ": not an IDX file (magic ", hex32(magic),
                    "; expected 0x000008RR..0x00000eRR with rank RR 1-8, e.g. 0x00000803 for "
                    "images, 0x00000801 for labels)"));
  }
  const size_t header = 4 + 4 * static_cast<size_t>(rank);
  if (bytes.size() < header) {
    throw Error(msg(path, ": truncated header (", bytes.size(), " bytes, expected ", header, ")"));
  }
  uint64_t count = static_cast<uint64_t>(size);
  for (int i = 0; i < rank; ++i) {
    const uint8_t* p = bytes.data() + 4 + 4 * i;
    uint64_t d = (uint64_t(p[0]) << 24) | (uint64_t(p[1]) << 16) | (uint64_t(p[2]) << 8) | p[3];
    out.dims.push_back(static_cast<int64_t>(d));
    if (__builtin_mul_overflow(count, d, &count)) throw Error(msg(path, ": dimensions overflow"));
  }
  const uint64_t payload = bytes.size() - header;
  if (payload < count) {
    throw Error(
        msg(path, ": truncated: dimensions need ", count, " bytes of data, found ", payload));
  }
  if (payload > count) {
    throw Error(msg(path, ": ", payload - count, " bytes after the data the dimensions describe"));
  }
  out.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return out;
}

ImageClassificationSet read_idx_classification(const std::string& images_path,
                                               const std::string& labels_path, int num_classes) {
  IdxArray images = read_idx(images_path);
  IdxArray labels = read_idx(labels_path);
  if (images.type != 0x08 || images.dims.size() != 3) {
    throw Error(msg(images_path,
                    ": expected unsigned-byte images of rank 3 (magic 0x00000803), found type ",
                    int(images.type), " rank ", images.dims.size()));
  }
  if (labels.type != 0x08 || labels.dims.size() != 1) {
    throw Error(msg(labels_path,
                    ": expected unsigned-byte labels of rank 1 (magic 0x00000801), found type ",
                    int(labels.type), " rank ", labels.dims.size()));
  }
  if (images.dims[0] != labels.dims[0]) {
    throw Error(msg(labels_path, ": ", labels.dims[0], " labels for ", images.dims[0],
                    " images in ", images_path));
  }
  if (images.dims[0] == 0) throw Error(msg(images_path, ": holds 0 images"));
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= num_classes) {
      throw Error(msg(labels_path, ": label ", int(labels.data[i]), " at index ", i,
                      " is outside [0, ", num_classes, ")"));
    }
  }
  ImageClassificationSet out;
  out.count = images.dims[0];
  out.rows = images.dims[1];
  out.cols = images.dims[2];
  out.images = std::move(images.data);
  out.labels = std::move(labels.data);
  return out;
}

}  // namespace recast::io
