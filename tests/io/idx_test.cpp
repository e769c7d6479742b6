// IDX (Fashion-MNIST) reader: valid raw and gzip files, and one file per way
// of being wrong (magic, type, rank, truncation raw and compressed, corrupt
// compressed data, trailing bytes, label range, count mismatch, empty set).

#include "recast/io/idx.h"
#include "recast/core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>

namespace recast::testing {
namespace {

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

std::string idx(uint8_t type, const std::vector<uint32_t>& dims, const std::string& payload) {
  std::string out = std::string(2, '\0') + static_cast<char>(type) + static_cast<char>(dims.size());
  for (uint32_t d : dims) out += be32(d);
  return out + payload;
}

std::string gzip(const std::string& raw) {
  uLongf size = compressBound(raw.size()) + 32;
  std::string out(size, '\0');
  z_stream s{};
  deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // gzip wrapper
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  s.avail_in = static_cast<uInt>(raw.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  return out;
}

std::string images(uint32_t n) {
  return idx(0x08, {n, 2, 3}, std::string(n * 6, '\x07'));
}
std::string labels(const std::string& values) {
  return idx(0x08, {static_cast<uint32_t>(values.size())}, values);
}

TEST(Idx, ReadsRawAndGzipClassificationSets) {
  TempDir dir;
  write_bytes(dir.file("img"), images(3));
  write_bytes(dir.file("lab.gz"), gzip(labels(std::string("\x00\x09\x04", 3))));
  auto set = io::read_idx_classification(dir.file("img"), dir.file("lab.gz"));
  EXPECT_EQ(set.count, 3);
  EXPECT_EQ(set.rows, 2);
  EXPECT_EQ(set.cols, 3);
  EXPECT_EQ(set.images.size(), 18u);
  EXPECT_EQ(set.labels, (std::vector<uint8_t>{0, 9, 4}));
}

TEST(Idx, BadFilesNameTheFileAndTheProblem) {
  TempDir dir;
  const std::string ok_labels = labels(std::string("\x01\x02", 2));
  struct Case {
    const char* name;
    std::string images, labels;
    const char* file;  // which file the message must name
    const char* expected;
  };
  std::string truncated_gz = gzip(images(2));
  truncated_gz.resize(truncated_gz.size() / 2);
  std::string corrupt_gz = gzip(images(2));
  for (size_t i = 12; i < corrupt_gz.size() - 8; ++i)
    corrupt_gz[i] = static_cast<char>(~corrupt_gz[i]);
  const std::vector<Case> cases = {
      {"bad_magic", "\x12\x34\x08\x03" + images(2).substr(4), ok_labels, "img",
       "not an IDX file (magic 0x12340803"},
      {"bad_type", idx(0x07, {2, 2, 3}, std::string(12, 'x')), ok_labels, "img", "not an IDX file"},
      {"rank_zero", std::string("\0\0\x08\0", 4), ok_labels, "img", "not an IDX file"},
      {"short_header", std::string("\0\0\x08\x03\0\0", 6), ok_labels, "img", "truncated header"},
      {"truncated_raw", images(2).substr(0, 20), ok_labels, "img",
       "truncated: dimensions need 12 bytes of data, found 4"},
      {"trailing", images(2) + "xy", ok_labels, "img", "2 bytes after the data"},
      {"truncated_gzip", truncated_gz, ok_labels, "img", "gzip"},
      {"corrupt_gzip", corrupt_gz, ok_labels, "img", "corrupt gzip data"},
      {"images_rank", idx(0x08, {2, 6}, std::string(12, 'x')), ok_labels, "img", "rank 3"},
      {"labels_type", images(2), idx(0x0C, {2}, std::string(8, '\0')), "lab",
       "unsigned-byte labels"},
      {"label_range", images(2), labels(std::string("\x01\x0a", 2)), "lab",
       "label 10 at index 1 is outside [0, 10)"},
      {"count_mismatch", images(3), ok_labels, "lab", "2 labels for 3 images"},
      {"empty", images(0), labels(""), "img", "holds 0 images"},
      {"huge_dims", idx(0x0E, {0xffffffffu, 0xffffffffu, 0xffffffffu}, ""), ok_labels, "img",
       "dimensions overflow"},
  };
  for (const Case& c : cases) {
    write_bytes(dir.file("img"), c.images);
    write_bytes(dir.file("lab"), c.labels);
    std::string error =
        error_of([&] { io::read_idx_classification(dir.file("img"), dir.file("lab")); });
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.name << ": " << error;
    EXPECT_EQ(error.rfind(dir.file(c.file), 0), 0u) << c.name << ": " << error;
  }
  EXPECT_NE(error_of([&] { io::read_idx(dir.file("missing")); }).find("cannot open"),
            std::string::npos);
}

TEST(Idx, RealFashionMnistTestSplit) {
  // Installed by scripts/install-deps.sh (Debian's dataset-fashion-mnist);
  // scripts/gpu-build.sh unpacks the same package elsewhere and says where.
  const char* env = std::getenv("RECAST_FASHION_MNIST_DIR");
  const std::string dir = env ? env : "/usr/share/datasets/fashion-mnist";
  auto set = io::read_idx_classification(dir + "/t10k-images-idx3-ubyte.gz",
                                         dir + "/t10k-labels-idx1-ubyte.gz");
  EXPECT_EQ(set.count, 10000);
  EXPECT_EQ(set.rows, 28);
  EXPECT_EQ(set.cols, 28);
  std::vector<int> per_class(10, 0);
  for (uint8_t l : set.labels) per_class[l]++;
  for (int n : per_class) EXPECT_EQ(n, 1000);  // the test split is balanced
}

}  // namespace
}  // namespace recast::testing
