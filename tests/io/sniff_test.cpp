// Format sniffing: pickle / zip / TorchScript files are recognised by content
// whatever their extension, and refused with a pointer to safetensors.

#include "recast/io/sniff.h"
#include "io/malformed_cases.h"
#include "recast/core/error.h"
#include "recast/io/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

namespace recast::testing {
namespace {

io::FileFormat sniff(const std::string& bytes) {
  return io::sniff_format(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

TEST(Sniff, RecognisesFormatsByContent) {
  EXPECT_EQ(sniff(safetensors_bytes("{}")), io::FileFormat::Safetensors);
  EXPECT_EQ(sniff(safetensors_bytes("  {}")), io::FileFormat::Safetensors);
  EXPECT_EQ(sniff(std::string("\x80\x02\x8a\x0a", 4)), io::FileFormat::Pickle);
  EXPECT_EQ(sniff(std::string("\x80\x04\x95", 3)), io::FileFormat::Pickle);
  std::string local_header = std::string("PK\x03\x04", 4) + std::string(26, '\0');
  EXPECT_EQ(sniff(local_header + "archive/data.pkl"), io::FileFormat::TorchZip);
  EXPECT_EQ(sniff(local_header + "model/code/__torch__.py"), io::FileFormat::TorchScript);
  EXPECT_EQ(sniff(local_header + "other.txt"), io::FileFormat::Zip);
  EXPECT_EQ(sniff("\x93NUMPY"), io::FileFormat::Numpy);
  EXPECT_EQ(sniff("GGUF\x03"), io::FileFormat::Gguf);
  EXPECT_EQ(sniff(std::string("\x89HDF\r\n\x1a\n", 8)), io::FileFormat::Hdf5);
  EXPECT_EQ(sniff("hello"), io::FileFormat::Unknown);
  EXPECT_EQ(sniff(""), io::FileFormat::Unknown);
}

TEST(Sniff, PickleNamedSafetensorsIsRefusedWithAdvice) {
  TempDir dir;
  std::string path = dir.file("model.safetensors");
  write_bytes(path, std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14));
  try {
    io::SafetensorsFile::open(path);
    FAIL();
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("arbitrary code"), std::string::npos) << what;
    EXPECT_NE(what.find("safetensors.torch.save_file"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace recast::testing
