// Table-driven: one malformed file per rule of the format (and valid borderline
// files), parsed both from memory and through the memory-mapped reader.

#include "io/malformed_cases.h"
#include "recast/core/error.h"
#include "recast/io/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

namespace recast::testing {
namespace {

class Malformed : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(Malformed, ReaderRejectsWithMessageNamingFileAndRule) {
  const MalformedCase& c = GetParam();
  TempDir dir;
  const std::string path = dir.file(c.name + ".safetensors");
  write_bytes(path, c.bytes);
  if (c.expected.empty()) {
    io::SafetensorsFile file = io::SafetensorsFile::open(path);
    for (const auto& info : file.tensors()) {
      at::Tensor t = file.tensor(info.name);
      EXPECT_EQ(t.sizes().vec(), info.shape);
    }
    return;
  }
  try {
    io::SafetensorsFile::open(path);
    FAIL() << c.name << ": accepted, expected an error containing \"" << c.expected << "\"";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(c.expected), std::string::npos) << "message: " << what;
    EXPECT_EQ(what.rfind(path, 0), 0u) << "message does not start with the path: " << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

std::string case_name(const ::testing::TestParamInfo<MalformedCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Rules, Malformed, ::testing::ValuesIn(malformed_cases()), case_name);

TEST(SafetensorsHeader, ParsesFromMemoryWithoutTheFile) {
  std::string bytes = safetensors_bytes(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[4,10]},)"
      R"("a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}  )",
      std::string(10, '\0'));
  auto header =
      io::parse_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem");
  ASSERT_EQ(header.tensors.size(), 2u);
  EXPECT_EQ(header.tensors[0].name, "a");  // sorted by name
  EXPECT_EQ(header.tensors[1].dtype, io::Dtype::BF16);
  EXPECT_EQ(header.metadata.at("format"), "pt");
  EXPECT_EQ(header.data_bytes, 10u);
  ASSERT_NE(header.find("b"), nullptr);
  EXPECT_EQ(header.find("c"), nullptr);
}

TEST(SafetensorsHeader, EveryReferenceDtypeNameRoundTrips) {
  for (const char* name :
       {"BOOL",    "F4",          "F6_E2M3",     "F6_E3M2", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
        "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16",     "U16", "F16", "BF16",    "I32",
        "U32",     "F32",         "C64",         "F64",     "I64", "U64"}) {
    auto dtype = io::dtype_from_name(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(io::dtype_name(*dtype), name);
  }
  EXPECT_FALSE(io::dtype_from_name("F128").has_value());
  EXPECT_FALSE(io::dtype_from_name("float32").has_value());
}

TEST(SafetensorsReader, BoolBytesOtherThanZeroOrOneAreRejected) {
  TempDir dir;
  std::string path = dir.file("b.safetensors");
  write_bytes(path, safetensors_bytes(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                                      std::string("\x01\x00\x02", 3)));
  auto file = io::SafetensorsFile::open(path);
  try {
    file.tensor("m");
    FAIL() << "accepted a BOOL byte of 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'm': BOOL element 2 holds byte 2"),
              std::string::npos)
        << e.what();
  }
}

TEST(SafetensorsReader, DtypeWithoutLibTorchTypeIsNamedWhenMaterialised) {
  TempDir dir;
  std::string path = dir.file("u.safetensors");
  write_bytes(path, safetensors_bytes(
                        R"({"u":{"dtype":"F8_E8M0","shape":[2],"data_offsets":[0,2]}})", "ab"));
  auto file = io::SafetensorsFile::open(path);  // the header itself is valid
  EXPECT_EQ(file.tensors().size(), 1u);
  try {
    file.tensor("u");
    FAIL() << "F8_E8M0 has no LibTorch type yet";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'u': dtype F8_E8M0 has no LibTorch equivalent"),
              std::string::npos)
        << e.what();
  }
}

TEST(SafetensorsReader, MissingTensorIsNamed) {
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  write_bytes(path, safetensors_bytes("{}"));
  auto file = io::SafetensorsFile::open(path);
  try {
    file.tensor("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'nope'"), std::string::npos);
  }
}

TEST(SafetensorsReader, UnalignedDataIsCopiedNotViewed) {
  // A hand-made file whose F32 tensor starts at an odd address.
  TempDir dir;
  std::string path = dir.file("odd.safetensors");
  std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  float values[2] = {1.5f, -2.25f};
  std::string data(1, '\x07');
  data.append(reinterpret_cast<const char*>(values), sizeof values);
  write_bytes(path, safetensors_bytes(header, data));
  auto file = io::SafetensorsFile::open(path);
  at::Tensor f = file.tensor("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data_ptr()) % alignof(float), 0u);
  EXPECT_EQ(f[0].item<float>(), 1.5f);
  EXPECT_EQ(f[1].item<float>(), -2.25f);
}

}  // namespace
}  // namespace recast::testing
