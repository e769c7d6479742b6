// Checkpoint directories: single file, sharded with an index, and every rule
// the index must follow.

#include "recast/io/checkpoint.h"
#include "recast/core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace recast::testing {
namespace {

namespace fs = std::filesystem;

io::NamedTensors sample_tensors() {
  at::manual_seed(0);
  io::NamedTensors out;
  for (int i = 0; i < 6; ++i) {
    out.emplace_back("layer." + std::to_string(i) + ".weight", at::randn({16, 16}));
    out.emplace_back("layer." + std::to_string(i) + ".bias", at::randn({16}));
  }
  return out;
}

std::string expect_open_error(const std::string& path) {
  return error_of([&] { io::TensorStore::open(path); });
}

TEST(Checkpoint, SingleFileDirectory) {
  TempDir dir;
  auto tensors = sample_tensors();
  io::save_weights(dir.path(), tensors);
  EXPECT_TRUE(fs::exists(dir.file("model.safetensors")));
  EXPECT_FALSE(fs::exists(dir.file("model.safetensors.index.json")));
  auto store = io::TensorStore::open(dir.path());
  EXPECT_FALSE(store.sharded());
  EXPECT_EQ(store.entries().size(), tensors.size());
  EXPECT_EQ(store.metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) EXPECT_TRUE(at::equal(store.tensor(name), t)) << name;
}

// Releasing a copied tensor's pages (loading into another dtype) drops them
// from memory, not from the file: read again, the values are the same, and
// the views of the other tensors are untouched.
TEST(Checkpoint, ReleasedPagesReadBackFromTheFile) {
  TempDir dir;
  at::manual_seed(1);
  io::NamedTensors tensors = {{"big", at::randn({512, 512})}, {"small", at::randn({3})}};
  io::save_weights(dir.path(), tensors);
  auto store = io::TensorStore::open(dir.path());
  const at::Tensor view = store.tensor("small");
  for (int round = 0; round < 2; ++round) {
    store.release("big");
    store.release("small");
    store.release("absent");  // nothing to release: no error
    EXPECT_TRUE(at::equal(store.tensor("big"), tensors[0].second));
    EXPECT_TRUE(at::equal(view, tensors[1].second));
  }
}

TEST(Checkpoint, ShardedRoundTripAndLayoutSwitch) {
  TempDir dir;
  auto tensors = sample_tensors();
  io::save_weights(dir.path(), tensors, {{"format", "pt"}}, /*max_shard_bytes=*/2048);
  EXPECT_FALSE(fs::exists(dir.file("model.safetensors")));
  auto store = io::TensorStore::open(dir.path());
  EXPECT_TRUE(store.sharded());
  EXPECT_GT(store.files().size(), 2u);
  EXPECT_EQ(store.entries().size(), tensors.size());
  uint64_t bytes = 0;
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(at::equal(store.tensor(name), t)) << name;
    bytes += static_cast<uint64_t>(t.nbytes());
  }
  EXPECT_EQ(store.total_bytes(), bytes);
  auto index = nlohmann::json::parse(read_bytes(dir.file("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), bytes);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());

  // Saving again as one file removes the shards and the index.
  io::save_weights(dir.path(), tensors);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(e.path().filename(), "model.safetensors");
  }
  EXPECT_EQ(files, 1u);
}

// Writes a sharded checkpoint, lets `edit` change the index JSON, and returns
// the error TensorStore::open gives.
std::string open_with_index(TempDir& dir, const std::function<void(nlohmann::json&)>& edit) {
  io::save_weights(dir.path(), sample_tensors(), {{"format", "pt"}}, 2048);
  auto index = nlohmann::json::parse(read_bytes(dir.file("model.safetensors.index.json")));
  edit(index);
  write_bytes(dir.file("model.safetensors.index.json"), index.dump());
  return expect_open_error(dir.path());
}

struct IndexCase {
  const char* name;
  std::function<void(nlohmann::json&)> edit;
  const char* expected;
};

TEST(Checkpoint, IndexRulesAreEnforced) {
  const std::string first = "layer.0.bias";
  const std::vector<IndexCase> cases = {
      {"absolute", [&](auto& j) { j["weight_map"][first] = "/etc/passwd.safetensors"; },
       "absolute path"},
      {"dotdot", [&](auto& j) { j["weight_map"][first] = "../x.safetensors"; },
       "leaves the checkpoint directory"},
      {"dotdot_inner", [&](auto& j) { j["weight_map"][first] = "a/../../x.safetensors"; }, "'..'"},
      {"backslash", [&](auto& j) { j["weight_map"][first] = "..\\x.safetensors"; }, "backslash"},
      {"drive", [&](auto& j) { j["weight_map"][first] = "C:x.safetensors"; }, "drive letter"},
      {"not_safetensors", [&](auto& j) { j["weight_map"][first] = "pytorch_model.bin"; },
       "does not end in .safetensors"},
      {"empty_name", [&](auto& j) { j["weight_map"][first] = ""; }, "empty shard name"},
      {"missing_shard",
       [&](auto& j) { j["weight_map"][first] = "model-00009-of-00009.safetensors"; },
       "does not exist"},
      {"not_string", [&](auto& j) { j["weight_map"][first] = 3; }, "expected a file name"},
      {"listed_but_absent", [&](auto& j) { j["weight_map"]["ghost"] = j["weight_map"][first]; },
       "tensor 'ghost' is listed for shard"},
      {"present_but_unlisted", [&](auto& j) { j["weight_map"].erase(first); },
       "not listed in weight_map"},
      {"wrong_shard",
       [&](auto& j) {
         std::string other = j["weight_map"]["layer.5.weight"];
         j["weight_map"][first] = other;
       },
       "is listed for shard"},
      {"no_weight_map", [&](auto& j) { j.erase("weight_map"); }, "\"weight_map\""},
      {"weight_map_array", [&](auto& j) { j["weight_map"] = nlohmann::json::array(); },
       "\"weight_map\""},
      {"empty_weight_map", [&](auto& j) { j["weight_map"] = nlohmann::json::object(); },
       "weight_map is empty"},
      {"index_array", [&](auto& j) { j = nlohmann::json::array(); }, "expected a JSON object"},
  };
  for (const auto& c : cases) {
    TempDir dir;
    std::string error = open_with_index(dir, c.edit);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.name << ": " << error;
    EXPECT_NE(error.find("model.safetensors.index.json"), std::string::npos)
        << c.name << ": " << error;
  }
}

TEST(Checkpoint, TensorInTwoShardsIsRejected) {
  TempDir dir;
  io::save_safetensors(dir.file("a.safetensors"), {{"x", at::ones({2})}});
  io::save_safetensors(dir.file("b.safetensors"), {{"x", at::ones({2})}, {"y", at::ones({2})}});
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})");
  std::string error = expect_open_error(dir.path());
  EXPECT_NE(error.find("tensor 'x' appears in shard 'a.safetensors' and in shard 'b.safetensors'"),
            std::string::npos)
      << error;
}

TEST(Checkpoint, IndexWithDuplicateKeysOrBadJsonIsRejected) {
  TempDir dir;
  io::save_safetensors(dir.file("a.safetensors"), {{"x", at::ones({2})}});
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"weight_map": {"x": "a.safetensors", "x": "a.safetensors"}})");
  EXPECT_NE(expect_open_error(dir.path()).find("duplicate JSON key 'x'"), std::string::npos);
  write_bytes(dir.file("model.safetensors.index.json"), R"({"weight_map": )");
  EXPECT_NE(expect_open_error(dir.path()).find("invalid JSON"), std::string::npos);
}

TEST(Checkpoint, TotalSizeMismatchIsOnlyAWarning) {
  TempDir dir;
  io::save_safetensors(dir.file("a.safetensors"), {{"x", at::ones({2})}});
  write_bytes(dir.file("model.safetensors.index.json"),
              R"({"metadata": {"total_size": 999}, "weight_map": {"x": "a.safetensors"}})");
  EXPECT_EQ(io::TensorStore::open(dir.path()).entries().size(), 1u);
}

TEST(Checkpoint, DirectoriesWithoutSafetensorsExplainWhy) {
  TempDir dir;
  EXPECT_NE(expect_open_error(dir.path()).find("no model.safetensors"), std::string::npos);
  write_bytes(dir.file("pytorch_model.bin"), "\x80\x02");
  EXPECT_NE(expect_open_error(dir.path()).find("recast reads safetensors only"), std::string::npos);
}

TEST(Checkpoint, ShardNameRules) {
  EXPECT_NO_THROW(io::check_shard_name("model-00001-of-00002.safetensors", "i", "t"));
  EXPECT_NO_THROW(io::check_shard_name("sub/model.safetensors", "i", "t"));
  EXPECT_THROW(io::check_shard_name("/abs.safetensors", "i", "t"), Error);
  EXPECT_THROW(io::check_shard_name("a/../../b.safetensors", "i", "t"), Error);
  EXPECT_THROW(io::check_shard_name("\\\\server\\share.safetensors", "i", "t"), Error);
}

TEST(Checkpoint, ParseByteSize) {
  EXPECT_EQ(io::parse_byte_size("5GB"), 5'000'000'000ULL);
  EXPECT_EQ(io::parse_byte_size("500MB"), 500'000'000ULL);
  EXPECT_EQ(io::parse_byte_size("2GiB"), 2ULL << 30);
  EXPECT_EQ(io::parse_byte_size("1.5kb"), 1500ULL);
  EXPECT_EQ(io::parse_byte_size("4096"), 4096ULL);
  EXPECT_THROW(io::parse_byte_size("lots"), UsageError);
  EXPECT_THROW(io::parse_byte_size("0"), UsageError);
  EXPECT_THROW(io::parse_byte_size("-5MB"), UsageError);
}

TEST(AtomicFile, UncommittedWriteLeavesNothing) {
  TempDir dir;
  {
    io::AtomicFile f(dir.file("out.bin"));
    f.write("abc", 3);
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
  io::write_file_atomic(dir.file("out.bin"), "hello");
  EXPECT_EQ(read_bytes(dir.file("out.bin")), "hello");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}), 1);
}

}  // namespace
}  // namespace recast::testing
