// Property test: random state dicts (every dtype LibTorch has, rank 0 to 6,
// zero-sized dims, random bytes including NaN payloads) are written and read
// back bit-identical; the written files follow the format's layout rules.

#include "recast/core/error.h"
#include "recast/io/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace recast::testing {
namespace {

std::vector<at::ScalarType> storable_types() {
  std::vector<at::ScalarType> out;
  for (int d = 0; d <= static_cast<int>(io::Dtype::U64); ++d) {
    if (auto t = io::to_scalar_type(static_cast<io::Dtype>(d))) out.push_back(*t);
  }
  return out;
}

at::Tensor random_tensor(std::mt19937_64& rng, at::ScalarType type) {
  std::uniform_int_distribution<int> rank_dist(0, 6);
  std::uniform_int_distribution<int> dim_dist(0, 4);
  std::vector<int64_t> shape(rank_dist(rng));
  for (auto& d : shape) d = dim_dist(rng) == 0 ? 0 : dim_dist(rng);  // ~20% zero dims
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  auto* p = static_cast<uint8_t*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) {
    p[i] = type == at::kBool ? static_cast<uint8_t>(rng() & 1) : static_cast<uint8_t>(rng());
  }
  return t;
}

std::string random_name(std::mt19937_64& rng) {
  static const char* const kParts[] = {"layer", "weight", "bias", "attn", "h", "ß", "名前", "x.y"};
  std::string name;
  int parts = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < parts; ++i) {
    name += std::string(i ? "." : "") + kParts[rng() % 8] + std::to_string(rng() % 100);
  }
  return name;
}

bool bytes_equal(const at::Tensor& a, const at::Tensor& b) {
  // Zero-sized tensors may have null data pointers, which memcmp must not see.
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         (a.nbytes() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0);
}

TEST(SafetensorsRoundTrip, RandomStateDictsComeBackBitIdentical) {
  const auto types = storable_types();
  std::mt19937_64 rng(20261123);
  TempDir dir;
  constexpr int kCases = 400;
  for (int c = 0; c < kCases; ++c) {
    io::NamedTensors tensors;
    std::set<std::string> names;
    int count = static_cast<int>(rng() % 12);
    while (static_cast<int>(tensors.size()) < count) {
      std::string name = random_name(rng);
      if (!names.insert(name).second) continue;
      tensors.emplace_back(name, random_tensor(rng, types[rng() % types.size()]));
    }
    io::Metadata metadata;
    if (rng() % 2) metadata = {{"format", "pt"}, {"case", std::to_string(c)}, {"ünï", "cödé"}};
    const std::string path = dir.file("case.safetensors");
    io::save_safetensors(path, tensors, metadata);

    io::SafetensorsFile file = io::SafetensorsFile::open(path);
    ASSERT_EQ(file.tensors().size(), tensors.size()) << "case " << c;
    EXPECT_EQ(file.metadata(), metadata);
    for (const auto& [name, expected] : tensors) {
      at::Tensor view = file.tensor(name);
      at::Tensor copy = file.tensor(name, /*copy=*/true);
      ASSERT_TRUE(bytes_equal(view, expected)) << "case " << c << " tensor " << name;
      ASSERT_TRUE(bytes_equal(copy, expected)) << "case " << c << " tensor " << name;
    }
    // Layout: header padded with spaces to a multiple of 8, starting with '{';
    // data in (dtype alignment desc, name) order, so every tensor is aligned.
    const io::Header& h = file.header();
    EXPECT_EQ(h.header_bytes % 8, 0u);
    std::string bytes = read_bytes(path);
    EXPECT_EQ(bytes[8], '{');
    std::vector<const io::TensorInfo*> by_offset;
    for (const auto& t : h.tensors) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    for (const auto* t : by_offset) {
      int align = std::max(1, io::dtype_bits(t->dtype) / 8);
      EXPECT_EQ((h.data_offset + t->begin) % align, 0u) << t->name;
    }
  }
}

TEST(SafetensorsRoundTrip, OutputIsDeterministic) {
  io::NamedTensors tensors = {{"b", at::arange(6, at::kFloat).reshape({2, 3})},
                              {"a", at::arange(4, at::kByte)},
                              {"c", at::ones({3}, at::kDouble)}};
  TempDir dir;
  io::save_safetensors(dir.file("1.safetensors"), tensors);
  std::reverse(tensors.begin(), tensors.end());
  io::save_safetensors(dir.file("2.safetensors"), tensors);
  EXPECT_EQ(read_bytes(dir.file("1.safetensors")), read_bytes(dir.file("2.safetensors")));
  // Largest alignment first, then name: c (F64), b (F32), a (U8).
  std::string bytes = read_bytes(dir.file("1.safetensors"));
  EXPECT_LT(bytes.find("\"c\""), bytes.find("\"b\""));
  EXPECT_LT(bytes.find("\"b\""), bytes.find("\"a\""));
}

TEST(SafetensorsRoundTrip, NonContiguousTensorsAreWrittenInLogicalOrder) {
  at::Tensor t = at::arange(12, at::kFloat).reshape({3, 4}).t();
  TempDir dir;
  io::save_safetensors(dir.file("t.safetensors"), {{"t", t}});
  auto back = io::SafetensorsFile::open(dir.file("t.safetensors")).tensor("t");
  EXPECT_TRUE(at::equal(back, t));
}

TEST(SafetensorsWriter, RejectsReservedDuplicateAndUnstorable) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  auto expect_error = [&](const io::NamedTensors& tensors, const std::string& expected) {
    try {
      io::save_safetensors(path, tensors);
      FAIL() << "accepted; expected " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  expect_error({{"__metadata__", at::ones({1})}}, "reserved");
  expect_error({{"a", at::ones({1})}, {"a", at::ones({2})}}, "tensor 'a': the name appears twice");
  expect_error({{"q", at::ones({1}, at::kComplexDouble)}}, "cannot be stored");
  expect_error({{"u", at::Tensor()}}, "undefined");
  expect_error({{std::string("bad\xff"), at::ones({1})}}, "not valid UTF-8");
  // Nothing is left behind: neither the target nor a temporary file.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(SafetensorsWriter, ReplacingAMappedFileKeepsOldViewsIntact) {
  // The reference writer once truncated a file that was still mapped
  // (safetensors#762); the atomic rename keeps the old inode alive.
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  io::save_safetensors(path, {{"x", at::full({4}, 3.0)}});
  auto file = io::SafetensorsFile::open(path);
  at::Tensor view = file.tensor("x");
  io::save_safetensors(path, {{"x", view * 2}});
  EXPECT_TRUE(at::equal(view, at::full({4}, 3.0)));
  EXPECT_TRUE(at::equal(io::SafetensorsFile::open(path).tensor("x"), at::full({4}, 6.0)));
}

TEST(SafetensorsWriter, MissingDirectoryIsNamed) {
  try {
    io::save_safetensors("/nonexistent-dir/x.safetensors", {{"a", at::ones({1})}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace recast::testing
