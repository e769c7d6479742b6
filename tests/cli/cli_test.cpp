// The recast executable as users meet it: exit codes (0 ok, 1 failure, 2 usage),
// one-line errors on stderr, and no partial output after a failure.

#include "io/malformed_cases.h"
#include "recast/io/checkpoint.h"
#include "process_util.h"
#include "recast/cli/verbs.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

namespace recast::testing {
namespace {

TEST(Cli, HelpAndVersion) {
  Result help = run({"--help"});
  EXPECT_EQ(help.code, 0);
  for (const char* verb : {"inspect", "list", "repack"})
    EXPECT_NE(help.out.find(verb), std::string::npos);
  Result verb_help = run({"inspect", "--help"});
  EXPECT_EQ(verb_help.code, 0);
  EXPECT_NE(verb_help.out.find("--json"), std::string::npos);
  Result version = run({"--version"});
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.out.rfind("recast 0.1.0", 0), 0u) << version.out;
}

TEST(Cli, UsageErrorsExitTwo) {
  expect_one_line_error(run({}), 2, "a verb is required");
  expect_one_line_error(run({"frobnicate"}), 2, "frobnicate");
  expect_one_line_error(run({"inspect"}), 2, "path is required");
  expect_one_line_error(run({"inspect", "x", "--bogus"}), 2, "--bogus");
  expect_one_line_error(run({"list", "--log-level", "loud"}), 2, "unknown log level 'loud'");
}

TEST(Cli, ListShowsKinds) {
  Result r = run({"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("models:"), std::string::npos);
  EXPECT_NE(r.out.find("recipes:"), std::string::npos);
  Result j = run({"list", "--json"});
  auto parsed = nlohmann::json::parse(j.out);
  EXPECT_TRUE(parsed.contains("models"));
  EXPECT_TRUE(parsed.contains("recipes"));
}

TEST(Cli, InspectPrintsExactShapesAndDtypes) {
  TempDir dir;
  std::string path = dir.file("w.safetensors");
  io::save_safetensors(path,
                       {{"enc.weight", at::zeros({3, 5}, at::kBFloat16)},
                        {"enc.bias", at::zeros({5}, at::kFloat)},
                        {"step", at::zeros({}, at::kLong)}},
                       {{"format", "pt"}});
  Result r = run({"inspect", path});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("enc.weight"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BF16"), std::string::npos);
  EXPECT_NE(r.out.find("[3, 5]"), std::string::npos);
  EXPECT_NE(r.out.find("parameters:  21"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'format' = 'pt'"), std::string::npos) << r.out;

  Result j = run({"inspect", path, "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  auto parsed = nlohmann::json::parse(j.out);
  EXPECT_EQ(parsed["num_tensors"], 3);
  EXPECT_EQ(parsed["parameters"], 21);
  EXPECT_EQ(parsed["bytes"], 3 * 5 * 2 + 5 * 4 + 8);
  EXPECT_EQ(parsed["metadata"]["format"], "pt");
  bool found = false;
  for (const auto& t : parsed["tensors"]) {
    if (t["name"] == "enc.weight") {
      found = true;
      EXPECT_EQ(t["dtype"], "BF16");
      EXPECT_EQ(t["shape"], nlohmann::json({3, 5}));
    }
  }
  EXPECT_TRUE(found);
}

TEST(Cli, InspectShardedDirectoryNamesShardsAndConfig) {
  TempDir dir;
  io::NamedTensors tensors;
  for (int i = 0; i < 4; ++i)
    tensors.emplace_back("h." + std::to_string(i) + ".w", at::ones({64, 64}));
  io::save_weights(dir.path(), tensors, {{"format", "pt"}}, 20000);
  write_bytes(dir.file("config.json"),
              R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})");
  Result r = run({"inspect", dir.path()});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("4 shards"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model-00002-of-00004.safetensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GPT2LMHeadModel (model_type gpt2)"), std::string::npos) << r.out;
  Result j = run({"inspect", dir.path(), "--json", "--summary"});
  auto parsed = nlohmann::json::parse(j.out);
  EXPECT_EQ(parsed["format"], "safetensors-sharded");
  EXPECT_EQ(parsed["files"].size(), 4u);
  EXPECT_EQ(parsed["parameters"], 4 * 64 * 64);
  EXPECT_FALSE(parsed.contains("tensors"));
}

TEST(Cli, InspectRejectsEveryMalformedFileWithOneLine) {
  TempDir dir;
  for (const auto& c : malformed_cases()) {
    std::string path = dir.file(c.name + ".safetensors");
    write_bytes(path, c.bytes);
    Result r = run({"inspect", path});
    if (c.expected.empty()) {
      EXPECT_EQ(r.code, 0) << c.name << ": " << r.err;
      continue;
    }
    SCOPED_TRACE(c.name);
    expect_one_line_error(r, 1, c.expected);
    EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST(Cli, RepackShardsCastsAndLeavesNothingOnFailure) {
  TempDir dir;
  std::string src = dir.file("src.safetensors");
  io::NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("l" + std::to_string(i), at::randn({32, 32}));
  tensors.emplace_back("ids", at::arange(10));
  io::save_safetensors(src, tensors);

  std::string out = dir.file("out");
  Result r = run({"repack", src, out, "--max-shard-size", "5kB", "--dtype", "bf16", "-q"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto store = io::TensorStore::open(out);
  EXPECT_TRUE(store.sharded());
  for (const auto& [name, t] : tensors) {
    at::Tensor back = store.tensor(name);
    if (t.is_floating_point()) {
      EXPECT_EQ(back.scalar_type(), at::kBFloat16);
      EXPECT_TRUE(at::equal(back, t.to(at::kBFloat16))) << name;
    } else {
      EXPECT_TRUE(at::equal(back, t)) << name;  // integers are never cast
    }
  }

  expect_one_line_error(run({"repack", src, dir.file("o2"), "--max-shard-size", "huge"}), 2,
                        "--max-shard-size: expected a size such as 500MB, 5GB or 2GiB, found 'huge'");
  expect_one_line_error(run({"repack", src, dir.file("o3"), "--dtype", "int3"}), 2, "--dtype");
  std::string bad = dir.file("bad.safetensors");
  write_bytes(bad, safetensors_bytes("{\"t\":"));
  expect_one_line_error(run({"repack", bad, dir.file("o4")}), 1, "not valid JSON");
  EXPECT_FALSE(std::filesystem::exists(dir.file("o2")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("o3")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("o4")));
}

const std::string kFixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";

TEST(Cli, ListShowsTheModelFamilies) {
  Result r = run({"list"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* arch :
       {"gpt2", "llama", "resnet18", "resnet34", "resnet50", "vit_tiny_patch16_224",
        "vit_small_patch16_224", "vit_base_patch16_224"}) {
    EXPECT_NE(r.out.find(arch), std::string::npos) << arch;
  }
}

TEST(Cli, InspectNamesTheArchitecture) {
  Result r = run({"inspect", kFixtures + "/llama_gqa", "--summary"});
  EXPECT_NE(r.out.find("LlamaForCausalLM (model_type llama)"), std::string::npos) << r.out;
  r = run({"inspect", kFixtures + "/resnet50_timm", "--summary"});
  EXPECT_NE(r.out.find("config:      resnet50"), std::string::npos) << r.out;
}

TEST(Cli, ForwardWritesLogitsAndDumpsThatMatchTheReference) {
  TempDir dir;
  for (const char* name : {"gpt2", "vit_small_timm"}) {
    const std::string fixture = kFixtures + "/" + name;
    const std::string out = dir.file(std::string(name) + ".safetensors");
    Result r = run({"forward", "--model", fixture, "--input", fixture + "/inputs.safetensors",
                    "--output", out, "--dump", "^(transformer\\.h\\.1|blocks\\.1)$", "-q"});
    ASSERT_EQ(r.code, 0) << r.err;
    io::TensorStore got = io::TensorStore::open(out);
    io::TensorStore ref = io::TensorStore::open(fixture + "/outputs.safetensors");
    ASSERT_EQ(got.entries().size(), 2u);
    for (const auto& e : got.entries()) {
      at::Tensor a = got.tensor(e.info->name), b = ref.tensor(e.info->name);
      double err = (a - b).abs().max().item<double>() / b.abs().max().item<double>();
      EXPECT_LE(err, 1e-5) << name << " " << e.info->name;
    }
  }
}

TEST(Cli, ForwardRejectsBadInputsWithOneLine) {
  TempDir dir;
  const std::string gpt2 = kFixtures + "/gpt2";
  io::save_safetensors(dir.file("big_id.safetensors"),
                       {{"input_ids", at::tensor({3, 500}).view({1, 2})}});
  expect_one_line_error(run({"forward", "--model", gpt2, "--input", dir.file("big_id.safetensors"),
                             "--output", dir.file("o1.safetensors")}),
                        1, "token id 500 at [0, 1] is outside the vocabulary [0, 96)");
  io::save_safetensors(dir.file("pixels.safetensors"), {{"pixel_values", at::zeros({1, 3, 8, 8})}});
  expect_one_line_error(run({"forward", "--model", gpt2, "--input", dir.file("pixels.safetensors"),
                             "--output", dir.file("o2.safetensors")}),
                        1, "unexpected tensor 'pixel_values'");
  expect_one_line_error(
      run({"forward", "--model", gpt2 + "/model.safetensors", "--input",
           dir.file("big_id.safetensors"), "--output", dir.file("o3.safetensors")}),
      2, "pass --arch");
  expect_one_line_error(
      run({"forward", "--model", kFixtures + "/vit_tiny_timm", "--input",
           dir.file("pixels.safetensors"), "--output", dir.file("o4.safetensors")}),
      1, "pixel_values: expected [B, 3, 32, 32]");
  for (const char* o : {"o1", "o2", "o3", "o4"}) {
    EXPECT_FALSE(std::filesystem::exists(dir.file(std::string(o) + ".safetensors"))) << o;
  }
}

// T-CNN through the CLI: a timm ResNet converted, its report, and the
// converted checkpoint's logits through `forward` still timm's.
TEST(Cli, ConvertTcnnReportsEachLayerAndKeepsTheLogits) {
  TempDir dir;
  const std::string src = kFixtures + "/resnet18_timm", out = dir.file("tcnn");
  Result r = run({"convert", "--recipe", "tcnn", "--model", src, "--out", out, "--layers", "layer[34]\\."});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("layer3.0.conv1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max abs err"), std::string::npos) << r.out;
  auto manifest = nlohmann::json::parse(read_bytes(out + "/recast_manifest.json"));
  EXPECT_EQ(manifest["conversion"]["recipe"], "tcnn");
  EXPECT_EQ(manifest["error_at_init"].size(), 8u);  // 2 blocks x 2 convs x 2 stages
  for (const auto& e : manifest["error_at_init"]) {
    EXPECT_LT(e["relative_error"].get<double>(), 1e-5) << e.dump();
    // Hard positional attention is the convolution to fp32 rounding; the
    // explicit attention maps (the reference form) are what was measured.
    EXPECT_LT(e["max_abs_error"].get<double>(), 1e-4) << e.dump();
    EXPECT_EQ(e["measured_with"], "explicit attention maps") << e.dump();
  }
  EXPECT_LT(manifest["conversion"]["logits_change"]["relative"].get<double>(), 1e-4);
  auto config = nlohmann::json::parse(read_bytes(out + "/config.json"));
  EXPECT_EQ(config["recast_tcnn"]["layers"].size(), 8u);
  Result f = run({"forward", "--model", out, "--input", src + "/inputs.safetensors", "--output",
                  dir.file("logits.safetensors")});
  ASSERT_EQ(f.code, 0) << f.err;
  const at::Tensor got = io::TensorStore::open(dir.file("logits.safetensors")).tensor("logits");
  const at::Tensor want = io::TensorStore::open(src + "/outputs.safetensors").tensor("logits");
  EXPECT_LT(((got - want).abs().max() / want.abs().max()).item<double>(), 1e-4);
  // Bad options: one line, exit 2, nothing written.
  expect_one_line_error(run({"convert", "--recipe", "tcnn", "--model", src, "--out", dir.file("x"),
                             "--layers", "fc"}),
                        2, "matches none");
  expect_one_line_error(run({"convert", "--recipe", "tcnn", "--model", src, "--out", dir.file("x"),
                             "--hard", "--alpha", "3"}),
                        2, "--hard");
  expect_one_line_error(run({"convert", "--recipe", "tcnn", "--model", kFixtures + "/gpt2", "--out",
                             dir.file("x")}),
                        2, "has no block convolutions");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x")));
}

// factorize on a GPT-2 saved by transformers: at full rank `forward` gives
// transformers' logits; at rank ratio 0.5 the report's numbers are what
// `recast inspect` counts.
TEST(Cli, FactorizeTransformersGpt2KeepsTheLogitsAndReportsWhatInspectCounts) {
  TempDir dir;
  const std::string src = kFixtures + "/gpt2";
  Result full = run({"convert", "--recipe", "factorize", "--model", src, "--out", dir.file("full"),
                     "--rank-ratio", "1", "--no-dense-fallback"});
  ASSERT_EQ(full.code, 0) << full.err;
  Result f = run({"forward", "--model", dir.file("full"), "--input", src + "/inputs.safetensors",
                  "--output", dir.file("logits.safetensors")});
  ASSERT_EQ(f.code, 0) << f.err;
  const at::Tensor got = io::TensorStore::open(dir.file("logits.safetensors")).tensor("logits");
  const at::Tensor want = io::TensorStore::open(src + "/outputs.safetensors").tensor("logits");
  EXPECT_LT(((got - want).abs().max() / want.abs().max()).item<double>(), 1e-4);

  Result half = run({"convert", "--recipe", "factorize", "--model", src, "--out", dir.file("half"),
                     "--rank-ratio", "0.5"});
  ASSERT_EQ(half.code, 0) << half.err;
  const auto conv = nlohmann::json::parse(read_bytes(dir.file("half/recast_manifest.json")))["conversion"];
  const auto before = nlohmann::json::parse(run({"inspect", src, "--json", "--summary"}).out);
  const auto after = nlohmann::json::parse(run({"inspect", dir.file("half"), "--json", "--summary"}).out);
  EXPECT_EQ(conv["params_before"], before["parameters"]);
  EXPECT_EQ(conv["params_after"], after["parameters"]);
  int64_t saved = 0;
  for (const auto& row : conv["layers"]) {
    if (row["rank"].is_string()) {
      // 48 x 48 at rank 24 holds as many numbers as dense: kept dense.
      EXPECT_NE(row["module"].get<std::string>().find("attn.c_proj"), std::string::npos) << row.dump();
      EXPECT_EQ(row["params_before"], row["params_after"]);
      continue;
    }
    EXPECT_EQ(row["rank"].get<int64_t>(), row["full_rank"].get<int64_t>() / 2) << row.dump();
    saved += row["params_before"].get<int64_t>() - row["params_after"].get<int64_t>();
  }
  EXPECT_EQ(before["parameters"].get<int64_t>() - after["parameters"].get<int64_t>(), saved);
  EXPECT_EQ(conv["layers"].size(), 8u);  // 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", src, "--out",
                             dir.file("x"), "--params", "0.5", "--recalibrate-bn", "4"}),
                        2, "--recalibrate-bn");
  for (const auto& [option, value] : std::vector<std::pair<std::string, std::string>>{
           {"--rank-ratio", "1.5"}, {"--energy", "0"}, {"--params", "2"}}) {
    expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", src, "--out",
                               dir.file("x"), option, value}),
                          2, option + ": expected");
  }
  expect_one_line_error(run({"convert", "--recipe", "tcnn", "--model", kFixtures + "/resnet18_timm",
                             "--out", dir.file("x"), "--data", "fashion-mnist", "--recalibrate-bn", "4"}),
                        2, "--recalibrate-bn");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x")));
}

// recast analyze on a T-CNN made from a timm ResNet: at init each head's peak
// is its tap; the picture is written; bad requests fail on one line, write nothing.
TEST(Cli, AnalyzeShowsEachHeadsAttentionAndDrawsIt) {
  TempDir dir;
  const std::string src = kFixtures + "/resnet18_timm", model = dir.file("tcnn");
  ASSERT_EQ(run({"convert", "--recipe", "tcnn", "--model", src, "--out", model, "--layers", "layer[34]\\."}).code, 0);
  std::vector<uint8_t> grey(28 * 28);
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<uint8_t>((i * 37) % 251);
  const std::string image = dir.file("digit.png");
  ASSERT_TRUE(stbi_write_png(image.c_str(), 28, 28, 1, grey.data(), 28));
  Result r = run({"analyze", "--model", model, "--image", image, "--query", "20,9", "--layers",
                  "layer3", "--out", dir.file("maps.png"), "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["layers"].size(), 4u);
  for (const auto& l : j["layers"]) {
    ASSERT_EQ(l["heads"].size(), 9u) << l.dump();
    for (int h = 0; h < 9; ++h) {
      const auto& head = l["heads"][h];
      EXPECT_EQ(head["peak"], nlohmann::json::array({h / 3 - 1, h % 3 - 1})) << head.dump();
      EXPECT_EQ(head["peak_weight"].get<double>(), 1.0);
      EXPECT_EQ(head["gate"].get<double>(), 0.0);
    }
  }
  int w = 0, h = 0, c = 0;
  EXPECT_TRUE(stbi_info(dir.file("maps.png").c_str(), &w, &h, &c));
  Result svg = run({"analyze", "--model", model, "--image", image, "--out", dir.file("maps.svg")});
  ASSERT_EQ(svg.code, 0) << svg.err;
  EXPECT_NE(svg.out.find("layer4.1.conv2"), std::string::npos) << svg.out;
  const std::string maps = read_bytes(dir.file("maps.svg"));
  EXPECT_EQ(maps.rfind("<?xml", 0), 0u);
  EXPECT_NE(maps.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(maps.find("<image"), std::string::npos);  // the heat maps
  EXPECT_NE(maps.find("<use"), std::string::npos);    // text, as glyphs
  // --index on a data set: the fixture is one-channel with timm's RGB
  // normalisation, read as its mean (as for --image and by every verb).
  Result idx = run({"analyze", "--model", model, "--index", "0", "--data", "fashion-mnist", "--json"});
  ASSERT_EQ(idx.code, 0) << idx.err;
  EXPECT_EQ(nlohmann::json::parse(idx.out)["layers"].size(), 8u);
  Result ev = run({"eval", "--model", src, "--data", "fashion-mnist", "--max-batches", "1", "--json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  // --summary: the accuracy line, no per-class table.
  Result line = run({"eval", "--model", src, "--data", "fashion-mnist", "--max-batches", "1", "--summary"});
  ASSERT_EQ(line.code, 0) << line.err;
  EXPECT_EQ(line.out.rfind("accuracy ", 0), 0u) << line.out;
  EXPECT_EQ(std::count(line.out.begin(), line.out.end(), '\n'), 1) << line.out;
  expect_one_line_error(run({"analyze", "--model", model}), 2, "--image");
  expect_one_line_error(run({"analyze", "--model", model, "--index", "3"}), 2, "--data");
  expect_one_line_error(run({"analyze", "--model", model, "--image", image, "--out", dir.file("x.jpg")}), 2, ".png");
  expect_one_line_error(run({"analyze", "--model", model, "--image", image, "--query", "28,0",
                             "--out", dir.file("x.png")}), 2, "outside");
  expect_one_line_error(run({"analyze", "--model", model, "--image", dir.file("none.png"), "--out",
                             dir.file("x.png")}), 1, "none.png");
  expect_one_line_error(run({"analyze", "--model", src, "--image", image, "--out", dir.file("x.png")}),
                        1, "no ConvAttention");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.png")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.jpg")));
}

}  // namespace
}  // namespace recast::testing

namespace recast::testing {
namespace {

// The engine's command line run in this process (stderr captured), for
// tables of cases that fail while parsing: no process start-up per case.
Result run_in_process(const std::vector<std::string>& args) {
  std::vector<std::string> storage = {"recast-engine"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : storage) argv.push_back(a.data());
  TempDir d;
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int fd = ::open(d.file("err").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  ::dup2(fd, 2);
  Result r;
  r.code = cli::run_cli(static_cast<int>(argv.size()), argv.data(),
                        {{"pretrain", cli::add_pretrain},
                         {"generate", cli::add_generate},
                         {"bench", cli::add_bench},
                         {"convert", cli::add_convert},
                         {"analyze", cli::add_analyze},
                         {"eval", cli::add_eval},
                         {"plot", cli::add_plot},
                         {"repack", cli::add_repack}});
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  r.err = read_bytes(d.file("err"));
  return r;
}

// Every numeric option is checked when the command line is parsed, before
// any work: out of range, NaN, infinity, overflow and non-integers are usage
// errors (exit 2) with one line naming the option, what it expects and what
// it found.
TEST(Cli, BadOptionValuesAreUsageErrorsNamingTheOption) {
  // Through the executable once: the same line, the same exit code.
  expect_one_line_error(run({"pretrain", "--arch", "gpt2", "--data", "x", "--out", "y", "--lr", "nan"}),
                        2, "--lr: expected a finite number in (0, 1e+30], found nan");
  const std::vector<std::string> pretrain = {"pretrain", "--arch", "gpt2", "--data", "x", "--out", "y"};
  std::vector<std::string> pretrain_distil = pretrain;
  pretrain_distil.insert(pretrain_distil.end(), {"--teacher", "t"});
  struct Case {
    std::vector<std::string> base;
    std::string option;
    std::vector<std::string> values;
  };
  const std::vector<Case> cases = {
      {pretrain, "--steps", {"0", "-5", "99999999999999999999999", "2.5"}},
      {pretrain, "--lr", {"0", "-1", "nan", "inf"}},
      {pretrain, "--min-lr-ratio", {"-1", "50"}},
      {pretrain, "--weight-decay", {"-5"}},
      {pretrain, "--warmup", {"-10"}},
      {pretrain, "--clip", {"-1"}},
      {pretrain, "--threads", {"-2"}},
      {pretrain_distil, "--distill-alpha", {"5"}},
      {pretrain_distil, "--temperature", {"0", "-1"}},
      {pretrain, "--batch-size", {"0"}},
      {pretrain, "--keep", {"1"}},
      {pretrain, "--frobenius-decay", {"-1", "nan"}},
      {{"generate", "--model", "x"}, "--temperature", {"-1", "nan"}},
      {{"generate", "--model", "x"}, "--top-p", {"2", "0"}},
      {{"generate", "--model", "x"}, "--max-tokens", {"-1"}},
      {{"bench", "decode", "--model", "x"}, "--context", {"0"}},
      {{"convert", "--model", "x", "--out", "y", "--recipe", "t2r"}, "--feature-dim", {"0"}},
      {{"convert", "--model", "x", "--out", "y", "--recipe", "t2r"}, "--transfer-steps", {"-2"}},
      {{"convert", "--model", "x", "--out", "y", "--recipe", "tcnn"}, "--alpha", {"nan", "0"}},
      {{"convert", "--model", "x", "--out", "y", "--recipe", "factorize"}, "--rank-ratio", {"nan"}},
      {{"convert", "--model", "x", "--out", "y", "--recipe", "t2r"}, "--batch-size", {"0", "1e99"}},
      {{"analyze", "--model", "x"}, "--index", {"-1", "0.5"}},
      {{"analyze", "--model", "x", "--index", "1"}, "--split-seed", {"-3"}},
      {{"eval", "--model", "x", "--data", "y"}, "--batch-size", {"0"}},
      {{"eval", "--model", "x", "--data", "y"}, "--threads", {"-1"}},
      {{"repack", "x", "y"}, "--max-shard-size", {"0", "-5MB", "5XB", "99999999999TB", "nan"}},
  };
  for (const auto& c : cases) {
    for (const auto& v : c.values) {
      std::vector<std::string> args = c.base;
      args.push_back(c.option);
      args.push_back(v);
      SCOPED_TRACE(c.option + " " + v);
      expect_one_line_error(run_in_process(args), 2, c.option + ": expected");
    }
  }
  // Options that do not apply, and bad settings outside the command line.
  const std::vector<std::pair<std::vector<std::string>, std::string>> inapplicable = {
      {{"convert", "--model", "x", "--out", "y", "--recipe", "tcnn", "--feature-dim", "4"},
       "--feature-dim is an option of --recipe t2r, not tcnn"},
      {{"analyze", "--model", "x", "--image", "i.png", "--split", "val"}, "with --image they do not apply"},
      {{"analyze", "--model", "x"}, "give one of --image FILE and --index N"},
      {{"--log-level", "loud", "eval", "--model", "x", "--data", "y"}, "--log-level: unknown log level 'loud'"},
      {{"generate", "--model", "x", "--prompt", "a", "--temperature", "0", "--top-p", "0.9"},
       "--top-p does not apply with --temperature 0"},
      {{"generate", "--model", "x", "--prompt", "a", "--temperature", "0", "--top-k", "5"},
       "--top-k does not apply with --temperature 0"},
      {{"generate", "--model", "x", "--prompt", "a", "--temperature", "0", "--seed", "3"},
       "--seed does not apply with --temperature 0"},
      {{"plot", "m.jsonl", "-o", "c.svg", "--format", "png"}, "--format png conflicts with -o 'c.svg'"},
      {{"pretrain", "--arch", "gpt2", "--data", "x", "--out", "y", "--distill-alpha", "0.3"},
       "--distill-alpha requires --teacher"},
      {{"pretrain", "--arch", "gpt2", "--data", "x", "--out", "y", "--temperature", "3"},
       "--temperature requires --teacher"},
  };
  for (const auto& [args, expected] : inapplicable) {
    SCOPED_TRACE(expected);
    expect_one_line_error(run_in_process(args), 2, expected);
  }
  ::setenv("RECAST_LOG_LEVEL", "chatty", 1);
  expect_one_line_error(run_in_process({"eval", "--model", "x", "--data", "y"}), 2,
                        "RECAST_LOG_LEVEL: unknown log level 'chatty'");
  ::unsetenv("RECAST_LOG_LEVEL");
}

}  // namespace
}  // namespace recast::testing
