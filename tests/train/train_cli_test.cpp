// The training verbs as processes: exact resume after SIGKILL at random steps,
// SIGTERM / double SIGINT, a diverging run stopped before a non-finite update,
// generation without a tokenizer, evaluation, a classifier head swap, and bad
// input giving one-line errors and no output directory.

#include "process_util.h"
#include "train/train_cli_util.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"
#include "recast/io/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

namespace recast::testing {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> pretrain_args(const std::string& data, const std::string& out,
                                       int steps = 50) {
  return {"pretrain", "--arch",     "gpt2",  "--set",         "n_layer=2",     "--set",
          "n_embd=32", "--set",     "n_head=2", "--data",     data,            "--seq-len",
          "32",        "--batch-size", "4",  "--steps",       std::to_string(steps), "--lr",
          "3e-3",      "--save-every", "3",  "--log-every",   "1",             "--threads",
          "2",         "--no-progress", "-q", "--out",        out};
}

class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    fs::create_directories(dir_->file("corpus"));
    write_corpus(dir_->file("corpus"));
    // The uninterrupted run every interrupted one must reproduce bit for bit.
    Result r = run(pretrain_args(dir_->file("corpus"), dir_->file("reference")));
    ASSERT_EQ(r.code, 0) << r.err;
    reference_ = new std::string(read_bytes(dir_->file("reference/model.safetensors")));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete dir_;
  }
  static std::string corpus() { return dir_->file("corpus"); }
  static void expect_reference(const std::string& out) {
    const std::string got = read_bytes(out + "/model.safetensors");
    ASSERT_FALSE(got.empty()) << out;
    EXPECT_TRUE(got == *reference_) << out << ": final weights differ from the uninterrupted run";
  }
  // Runs the same command with --resume to the end; the weights must be the reference's.
  static void resume_and_expect_reference(const std::string& out) {
    auto args = pretrain_args(corpus(), out);
    args.push_back("--resume");
    Result r = run(args);
    ASSERT_EQ(r.code, 0) << r.err;
    expect_reference(out);
  }
  // The reference GPT converted to T2R (20 attention-transfer steps), built
  // once for the tests that use it; each of them checks one verb, so that a
  // failure in one does not hide the others.
  static const std::string& t2r_model() {
    static std::string path;
    static Result convert;
    if (path.empty()) {
      path = dir_->file("t2r");
      convert = run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"), "--out", path,
                     "--feature-dim", "16", "--data", corpus(), "--seq-len", "32", "--batch-size",
                     "4", "--transfer-steps", "20", "--threads", "2"});
    }
    EXPECT_EQ(convert.code, 0) << convert.err;
    return path;
  }
  // The reference GPT factorized to 50 % of its numbers (report on --data),
  // built once for the tests that use it.
  static const std::string& factorized_model() {
    static std::string path;
    static Result convert;
    if (path.empty()) {
      path = dir_->file("f50");
      convert = run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"), "--out",
                     path, "--params", "0.5", "--data", corpus(), "--seq-len", "32", "--batch-size", "4"});
    }
    EXPECT_EQ(convert.code, 0) << convert.err;
    factorize_output_ = &convert.out;
    return path;
  }
  // A converted checkpoint's manifest: attention transfer reduced each of
  // its `layers` layers' error against the attention it replaced.
  static void expect_transfer_lowered_each_layer(const nlohmann::json& manifest, size_t layers) {
    ASSERT_EQ(manifest["error_at_init"].size(), layers);
    ASSERT_EQ(manifest["attention_transfer"]["error_after"].size(), layers);
    for (size_t i = 0; i < layers; ++i) {
      EXPECT_LT(manifest["attention_transfer"]["error_after"][i]["relative_error"].get<double>(),
                manifest["error_at_init"][i]["relative_error"].get<double>())
          << i;
    }
  }
  // eval and greedy generate take the checkpoint without flags.
  static void expect_evaluates_and_generates(const std::string& out) {
    Result ev = run({"eval", "--model", out, "--data", corpus(), "--json", "--threads", "2"});
    ASSERT_EQ(ev.code, 0) << ev.err;
    EXPECT_TRUE(std::isfinite(nlohmann::json::parse(ev.out)["perplexity"].get<double>()));
    Result gen = run({"generate", "--model", out, "--prompt", "the ", "--max-tokens", "8",
                      "--temperature", "0", "--json", "--ignore-eos"});
    ASSERT_EQ(gen.code, 0) << gen.err;
    EXPECT_EQ(nlohmann::json::parse(gen.out)["ids"].size(), 8u);
  }
  static const std::string* factorize_output_;
  static TempDir* dir_;
  static std::string* reference_;
};
const std::string* TrainCli::factorize_output_ = nullptr;
TempDir* TrainCli::dir_ = nullptr;
std::string* TrainCli::reference_ = nullptr;

TEST_F(TrainCli, KillAtRandomStepsThenResumeIsBitIdentical) {
  std::mt19937 rng(2026);
  for (int trial = 0; trial < 3; ++trial) {
    TempDir t;
    const std::string out = t.file("run");
    const int64_t kill_at = std::uniform_int_distribution<int64_t>(2, 40)(rng);
    Child child(pretrain_args(corpus(), out), t.file("log"));
    ASSERT_TRUE(wait_for_step(out, kill_at)) << read_bytes(t.file("log"));
    child.signal(SIGKILL);
    EXPECT_EQ(child.wait(), 128 + SIGKILL);
    auto args = pretrain_args(corpus(), out);
    args.push_back("--resume");
    Result r = run(args);
    ASSERT_EQ(r.code, 0) << "trial " << trial << " (killed after step " << kill_at << "): " << r.err;
    expect_reference(out);
    // The metrics log has one line per step, none repeated by the resume.
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    int64_t expected = 1;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["split"] == "train") {
        EXPECT_EQ(j["step"].get<int64_t>(), expected++);
      }
    }
    EXPECT_EQ(expected, 51);
  }
}

TEST_F(TrainCli, SigtermCheckpointsAndExitsZeroThenResumes) {
  TempDir t;
  const std::string out = t.file("run");
  Child child(pretrain_args(corpus(), out), t.file("log"));
  ASSERT_TRUE(wait_for_step(out, 4));
  child.signal(SIGTERM);
  EXPECT_EQ(child.wait(), 0) << read_bytes(t.file("log"));
  const std::string log = read_bytes(t.file("log"));
  EXPECT_NE(log.find("interrupted: stopped after step"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors")) << "no final model before the last step";
  const int64_t stopped = logged_step(out);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-" + std::string(8 - std::to_string(stopped).size(), '0') +
                         std::to_string(stopped)))
      << "the step the signal interrupted is checkpointed";
  resume_and_expect_reference(out);
}

TEST_F(TrainCli, SecondSignalExitsAtOnceLeavingTheLastCheckpointIntact) {
  TempDir t;
  const std::string out = t.file("run");
  Child child(pretrain_args(corpus(), out), t.file("log"));
  ASSERT_TRUE(wait_for_step(out, 7));
  child.signal(SIGINT);
  child.signal(SIGINT);
  const int code = child.wait();
  EXPECT_TRUE(code == 128 + SIGINT || code == 0) << code << " " << read_bytes(t.file("log"));
  // Every checkpoint directory under its final name is complete.
  for (const auto& e : fs::directory_iterator(out + "/checkpoints")) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) != 0) continue;
    EXPECT_TRUE(fs::exists(e.path() / "trainer_state.json")) << name;
    EXPECT_NO_THROW(io::TensorStore::open(e.path().string())) << name;
    EXPECT_NO_THROW(io::TensorStore::open((e.path() / "optimizer.safetensors").string())) << name;
  }
  resume_and_expect_reference(out);
}

TEST_F(TrainCli, DivergenceStopsBeforeTheUpdateAndKeepsTheLastGoodCheckpoint) {
  TempDir t;
  const std::string out = t.file("run");
  auto args = pretrain_args(corpus(), out, 20);
  set_arg(args, "--lr", "1e30");
  set_arg(args, "--save-every", "1");
  for (const char* a : {"--warmup", "0", "--clip", "0"}) args.push_back(a);
  Result r = run(args);
  EXPECT_EQ(r.code, 1) << r.err;
  const std::string last = r.err.substr(r.err.rfind("recast: error: "));
  EXPECT_EQ(std::count(last.begin(), last.end(), '\n'), 1) << last;
  const auto at = last.find("step ");
  ASSERT_NE(at, std::string::npos) << last;
  const int64_t bad_step = std::stoll(last.substr(at + 5));
  EXPECT_GE(bad_step, 2) << last;
  EXPECT_NE(last.find(" is "), std::string::npos) << last;
  EXPECT_NE(last.find("stopped before the optimizer step"), std::string::npos) << last;
  auto name = [](int64_t s) {
    std::string n = std::to_string(s);
    return "step-" + std::string(8 - n.size(), '0') + n;
  };
  EXPECT_NE(last.find(name(bad_step - 1)), std::string::npos) << "names the last good checkpoint";
  EXPECT_TRUE(fs::exists(out + "/checkpoints/" + name(bad_step - 1) + "/trainer_state.json"));
  EXPECT_FALSE(fs::exists(out + "/checkpoints/" + name(bad_step)));
  EXPECT_NO_THROW(io::TensorStore::open(out + "/checkpoints/" + name(bad_step - 1)));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
}

// T5 end to end on text no test had: a SentencePiece tokenizer trained with
// the library, tokenize, span-corruption pretraining killed mid-run and
// resumed to the same bits, eval (loss on span corruption) and generation.
TEST_F(TrainCli, T5SpanCorruptionTrainsResumesExactlyEvaluatesAndGenerates) {
  TempDir t;
  Result tok = run({"tokenizer", "train", "--data", corpus(), "--vocab-size", "30", "--out",
                    t.file("tok")});
  ASSERT_EQ(tok.code, 0) << tok.err;
  ASSERT_TRUE(fs::exists(t.file("tok/spiece.model")));
  Result ids = run({"tokenize", "--model", t.file("tok"), "--text", "the union <extra_id_0> strong",
                    "--json"});
  ASSERT_EQ(ids.code, 0) << ids.err;
  const auto j = nlohmann::json::parse(ids.out)["ids"];
  ASSERT_GE(j.size(), 4u);
  EXPECT_EQ(j.back(), 1);                        // </s> appended
  EXPECT_NE(std::find(j.begin(), j.end(), 129), j.end());  // <extra_id_0> = 30 + 100 - 1
  Result plain = run({"tokenize", "--model", t.file("tok"), "--text", "the union", "--no-special"});
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_EQ(plain.out.find(",1\n"), std::string::npos) << plain.out;

  auto args = [&](const std::string& out) {
    return std::vector<std::string>{
        "pretrain", "--arch", "t5", "--set", "d_model=32", "--set", "d_kv=8", "--set", "d_ff=48",
        "--set", "num_layers=2", "--set", "num_heads=4", "--set", "relative_attention_num_buckets=8",
        "--set", "relative_attention_max_distance=16", "--tokenizer", t.file("tok"), "--data",
        corpus(), "--seq-len", "24", "--batch-size", "4", "--steps", "16", "--lr", "3e-3",
        "--save-every", "2", "--log-every", "1", "--threads", "2", "--no-progress", "-q", "--out",
        out};
  };
  Result ref = run(args(t.file("ref")));
  ASSERT_EQ(ref.code, 0) << ref.err;
  {
    Child child(args(t.file("cut")), t.file("cut.log"));
    ASSERT_TRUE(wait_for_step(t.file("cut"), 7));
    child.signal(SIGKILL);
    child.wait();
  }
  auto resume = args(t.file("cut"));
  resume.push_back("--resume");
  Result resumed = run(resume);
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_TRUE(read_bytes(t.file("cut/model.safetensors")) == read_bytes(t.file("ref/model.safetensors")))
      << "a killed and resumed T5 run ends with other weights";
  const auto manifest = nlohmann::json::parse(read_bytes(t.file("ref/recast_manifest.json")));
  EXPECT_EQ(manifest["objective"], "span-corruption");

  Result ev = run({"eval", "--model", t.file("ref"), "--data", corpus(), "--split", "test", "--json",
                   "--threads", "2"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  const auto e = nlohmann::json::parse(ev.out);
  EXPECT_GT(e["perplexity"].get<double>(), 1.0);
  EXPECT_LT(e["perplexity"].get<double>(), 130.0);  // below uniform over the vocabulary
  Result gen = run({"generate", "--model", t.file("ref"), "--prompt", "the union <extra_id_0> strong",
                    "--prompt", "we shall", "--max-tokens", "6", "--temperature", "0", "--json"});
  ASSERT_EQ(gen.code, 0) << gen.err;
  std::istringstream lines(gen.out);
  int rows = 0;
  for (std::string line; std::getline(lines, line); ++rows) {
    const auto g = nlohmann::json::parse(line);
    EXPECT_LE(g["ids"].size(), 6u);
    EXPECT_TRUE(g.contains("text"));
  }
  EXPECT_EQ(rows, 2);
  // Text to text: input / target pairs and labelled text (the label's name is
  // the target); eval reports the loss and the exact-match accuracy of the
  // generated targets.
  {
    std::string pairs, labelled;
    const char* words[] = {"union", "people", "strong", "fail"};
    for (int i = 0; i < 60; ++i) {
      const std::string w = words[i % 4];
      pairs += nlohmann::json({{"input", "repeat: " + w}, {"target", w}}).dump() + "\n";
      labelled += nlohmann::json({{"text", "we shall " + w}, {"label", i % 2 ? "odd" : "even"}}).dump() + "\n";
    }
    write_bytes(t.file("pairs.jsonl"), pairs);
    write_bytes(t.file("labelled.jsonl"), labelled);
  }
  for (const char* data : {"pairs.jsonl", "labelled.jsonl"}) {
    SCOPED_TRACE(data);
    const std::string out = t.file(std::string("ft-") + data);
    Result ft = run({"finetune", "--model", t.file("ref"), "--data", t.file(data), "--steps", "20",
                     "--batch-size", "8", "--lr", "3e-3", "--threads", "2", "--no-progress", "-q",
                     "--out", out});
    ASSERT_EQ(ft.code, 0) << ft.err;
    Result e2 = run({"eval", "--model", out, "--data", t.file(data), "--split", "test", "--json",
                     "--threads", "2"});
    ASSERT_EQ(e2.code, 0) << e2.err;
    const auto j2 = nlohmann::json::parse(e2.out);
    EXPECT_GE(j2["accuracy"].get<double>(), 0.0);
    EXPECT_LE(j2["accuracy"].get<double>(), 1.0);
    EXPECT_GT(j2["perplexity"].get<double>(), 1.0);
    EXPECT_EQ(nlohmann::json::parse(read_bytes(out + "/recast_manifest.json"))["objective"], "text-to-text");
  }
  // Distillation from an encoder-decoder teacher (the padded targets left out).
  Result distil = run({"finetune", "--model", t.file("ref"), "--teacher", t.file("ref"), "--data",
                       t.file("pairs.jsonl"), "--steps", "4", "--batch-size", "8", "--threads", "2",
                       "--no-progress", "-q", "--out", t.file("distilled")});
  ASSERT_EQ(distil.code, 0) << distil.err;
  expect_one_line_error(run({"finetune", "--model", t.file("ref"), "--teacher", dir_->file("reference"),
                             "--data", t.file("pairs.jsonl"), "--steps", "2", "--out", t.file("bad-teacher")}),
                        2, "--teacher");
  // Pairs are an encoder-decoder's data.
  expect_one_line_error(run({"eval", "--model", dir_->file("reference"), "--data", t.file("pairs.jsonl")}), 2,
                        "pairs.jsonl");
  // The byte tokenizer works as ByT5's: bytes, </s>, 100 sentinels.
  auto bytes = args(t.file("bytes"));
  set_arg(bytes, "--tokenizer", "bytes");
  set_arg(bytes, "--steps", "2");
  Result b = run(bytes);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(nlohmann::json::parse(read_bytes(t.file("bytes/config.json")))["vocab_size"], 357);
  // Misuse is named.
  auto lm = args(t.file("bad"));
  lm.insert(lm.end(), {"--objective", "lm"});
  expect_one_line_error(run(lm), 2, "--objective");
  expect_one_line_error(run({"tokenize", "--model", t.file("tok")}), 2, "--text");
}

TEST_F(TrainCli, ExistingCheckpointsNeedResume) {
  Result r = run(pretrain_args(corpus(), dir_->file("reference")));
  expect_one_line_error(r, 2, "already holds checkpoints");
}

TEST_F(TrainCli, EvalReportsPerplexityAndBitsPerByte) {
  Result r = run({"eval", "--model", dir_->file("reference"), "--data", corpus(), "--split",
                  "test", "--json", "--threads", "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  EXPECT_LT(j["perplexity"].get<double>(), 257.0);  // learnt something: below uniform bytes
  // Byte tokens: bits per byte is the loss in bits.
  EXPECT_NEAR(j["bits_per_byte"].get<double>() * std::log(2.0), j["loss"].get<double>(), 0.05);
}

TEST_F(TrainCli, GenerateIdsWithoutATokenizerAndTextWithOne) {
  TempDir t;
  fs::create_directories(t.file("bare"));
  for (const char* f : {"config.json", "model.safetensors"}) {
    fs::copy_file(dir_->file(std::string("reference/") + f), t.file(std::string("bare/") + f));
  }
  Result ids = run({"generate", "--model", t.file("bare"), "--prompt-ids", "116,104,101", "--max-tokens",
                    "6", "--temperature", "0", "--ignore-eos", "--json"});
  ASSERT_EQ(ids.code, 0) << ids.err;
  auto j = nlohmann::json::parse(ids.out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json::array({116, 104, 101}));
  EXPECT_EQ(j["ids"].size(), 6u);
  EXPECT_FALSE(j.contains("text"));
  expect_one_line_error(run({"generate", "--model", t.file("bare"), "--prompt", "the"}), 1,
                        "no tokenizer files");
  // A token id beyond the vocabulary (257 ids) is refused, naming the id.
  expect_one_line_error(run({"generate", "--model", t.file("bare"), "--prompt-ids", "1,5000"}), 1,
                        "5000");
  expect_one_line_error(run({"generate", "--model", t.file("bare"), "--prompt-ids", "1,x"}), 2,
                        "--prompt-ids");
  // Greedy decoding is deterministic, and text and ids agree.
  Result a = run({"generate", "--model", dir_->file("reference"), "--prompt", "the ", "--max-tokens",
                  "12", "--temperature", "0", "--json", "--ignore-eos"});
  Result b = run({"generate", "--model", dir_->file("reference"), "--prompt-ids", "116,104,101,32",
                  "--max-tokens", "12", "--temperature", "0", "--json", "--ignore-eos"});
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(ja["ids"], jb["ids"]);
  std::string text;
  for (auto id : ja["ids"]) text += static_cast<char>(id.get<int>());
  EXPECT_EQ(ja["text"].get<std::string>(), text);
  // Sampling with a seed repeats.
  auto sampled = [&] {
    return run({"generate", "--model", dir_->file("reference"), "--prompt", "we ", "--max-tokens", "10",
                "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--json", "--ignore-eos"}).out;
  };
  EXPECT_EQ(sampled(), sampled());
}

TEST_F(TrainCli, BadDataGivesOneLineErrorsAndNoOutput) {
  TempDir t;
  auto args = pretrain_args("no-such-data-set", t.file("out1"));
  expect_one_line_error(run(args), 1, "'no-such-data-set': does not exist");
  EXPECT_FALSE(fs::exists(t.file("out1")));
  write_bytes(t.file("empty.txt"), "");
  expect_one_line_error(run(pretrain_args(t.file("empty.txt"), t.file("out2"))), 1, "empty data set");
  EXPECT_FALSE(fs::exists(t.file("out2")));
  write_bytes(t.file("tiny.txt"), "only a few bytes");
  expect_one_line_error(run(pretrain_args(t.file("tiny.txt"), t.file("out3"))), 1, "empty data set");
  auto bad_arch = pretrain_args(corpus(), t.file("out4"));
  bad_arch[2] = "gpt3";
  expect_one_line_error(run(bad_arch), 2, "gpt3");
  EXPECT_FALSE(fs::exists(t.file("out4")));
  expect_one_line_error(run({"pretrain", "--arch", "gpt2", "--data", corpus(), "--out", t.file("o5"),
                             "--bogus"}),
                        2, "--bogus");
}

// An image folder of `classes` classes, `per_class` 16x16 grey PNGs each.
void image_folder(const std::string& dir, int classes, int per_class = 8) {
  for (int c = 0; c < classes; ++c) {
    const std::string cls = dir + "/class" + std::to_string(c);
    fs::create_directories(cls);
    for (int i = 0; i < per_class; ++i) {
      std::vector<uint8_t> px(16 * 16);
      for (size_t k = 0; k < px.size(); ++k) px[k] = static_cast<uint8_t>((k * (c + 1) * 13 + i) & 255);
      ASSERT_TRUE(stbi_write_png((cls + "/" + std::to_string(i) + ".png").c_str(), 16, 16, 1,
                                 px.data(), 16));
    }
  }
}

TEST_F(TrainCli, FinetuneSwapsTheClassifierHeadForNewClasses) {
  TempDir t;
  image_folder(t.file("two"), 2);
  image_folder(t.file("three"), 3);
  // An RGB model (in_chans 3) on grey images: every verb repeats the channel.
  Result pre = run({"pretrain", "--arch", "resnet18", "--set", "channels=[4,8,8,8]", "--set", "in_chans=3",
                    "--data", t.file("two"), "--steps", "3", "--batch-size", "4", "--out", t.file("m2"),
                    "--no-progress", "--threads", "2"});
  ASSERT_EQ(pre.code, 0) << pre.err;
  EXPECT_NE(pre.err.find("given as 3x16x16"), std::string::npos) << pre.err;
  Result fine = run({"finetune", "--model", t.file("m2"), "--data", t.file("three"), "--steps", "3",
                     "--batch-size", "4", "--out", t.file("m3"), "--no-progress", "--threads", "2"});
  ASSERT_EQ(fine.code, 0) << fine.err;
  EXPECT_NE(fine.err.find("new head for 3 classes"), std::string::npos) << fine.err;
  Result ev = run({"eval", "--model", t.file("m3"), "--data", t.file("three"), "--split", "all",
                   "--json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  auto j = nlohmann::json::parse(ev.out);
  EXPECT_EQ(j["confusion"].size(), 3u);
  EXPECT_EQ(j["count"].get<int>(), 24);
  int64_t total = 0;
  for (const auto& row : j["confusion"]) for (const auto& n : row) total += n.get<int64_t>();
  EXPECT_EQ(total, 24);
  auto config = nlohmann::json::parse(read_bytes(t.file("m3/config.json")));
  EXPECT_EQ(config["num_classes"], 3);
  // Evaluating a classifier on text is a usage error.
  expect_one_line_error(run({"eval", "--model", t.file("m3"), "--data", corpus()}), 2,
                        "is a classifier");
}

// --channels-last keeps the convolutions' weights and the image batches in
// NHWC memory: the same training up to rounding, the saved model the same
// format (a plain model that loads and evaluates without the option).
TEST_F(TrainCli, ChannelsLastTrainsTheSameModel) {
  TempDir t;
  image_folder(t.file("imgs"), 2);
  auto train_loss = [&](const std::string& out, bool channels_last) {
    std::vector<std::string> args = {"pretrain", "--arch", "resnet18", "--set", "channels=[4,8,8,8]", "--data",
                                     t.file("imgs"), "--steps", "3", "--batch-size", "4", "--out", t.file(out),
                                     "--no-progress", "--threads", "2"};
    if (channels_last) args.push_back("--channels-last");
    Result r = run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    std::ifstream in(t.file(out + "/metrics.jsonl"));
    std::string line;
    double loss = -1;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["split"] == "train") loss = j["loss"].get<double>();
    }
    return loss;
  };
  const double plain = train_loss("plain", false), nhwc = train_loss("nhwc", true);
  EXPECT_GT(plain, 0);
  EXPECT_NEAR(nhwc, plain, 1e-4 * std::max(1.0, plain));
  EXPECT_EQ(nlohmann::json::parse(read_bytes(t.file("nhwc/recast_manifest.json")))["channels_last"], true);
  Result ev = run({"eval", "--model", t.file("nhwc"), "--data", t.file("imgs"), "--split", "all", "--json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
}

// bench decode --profile: a Kineto trace and the kernels per token where
// LibTorch has Kineto (the GPU machine's), else one line saying so; nothing
// left behind either way, and a missing directory is refused before any work.
TEST_F(TrainCli, BenchDecodeProfileWritesATraceOrSaysWhyNot) {
  TempDir t;
  const std::string trace = t.file("trace.json");
  Result r = run({"bench", "decode", "--model", dir_->file("reference"), "--context", "8", "--new-tokens", "3",
                  "--json", "--profile", trace, "--threads", "2"});
  if (r.code == 0) {
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["profile"]["trace"], trace);
    EXPECT_GT(j["profile"]["events_per_token"].get<double>(), 0.0);
    EXPECT_FALSE(j["profile"]["top"].empty());
    EXPECT_TRUE(nlohmann::json::parse(read_bytes(trace)).contains("traceEvents"));
  } else {
    expect_one_line_error(r, 1, "--profile: LibTorch's Kineto profiler failed");
    EXPECT_TRUE(fs::is_empty(t.path())) << "a partial trace was left";
  }
  expect_one_line_error(run({"bench", "decode", "--model", dir_->file("reference"), "--profile",
                             t.file("no/such/trace.json")}),
                        2, "does not exist");
}

// A fine-tune's --seed changes the data order, not the split: a new split
// would train on the source model's held-out texts and evaluate on its
// training texts.
TEST_F(TrainCli, FinetuneKeepsTheSourceModelsSplitWhateverItsSeed) {
  TempDir t;
  const std::vector<std::string> ft = {"finetune", "--data", corpus(), "--seq-len", "32",
                                       "--batch-size", "4", "--steps", "2", "--no-progress",
                                       "--threads", "2"};
  auto finetune = [&](const std::string& from, const std::string& out,
                      std::vector<std::string> extra) {
    std::vector<std::string> args = ft;
    for (const std::string& a : {std::string("--model"), from, std::string("--out"), out}) {
      args.push_back(a);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return run(args);
  };
  auto manifest = [&](const std::string& dir) {
    return nlohmann::json::parse(read_bytes(dir + "/recast_manifest.json"));
  };
  Result r = finetune(dir_->file("reference"), t.file("s7"), {"--seed", "7"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(manifest(t.file("s7"))["seed"], 7);
  EXPECT_EQ(manifest(t.file("s7"))["split_seed"], 0);
  auto eval = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"eval", "--model", t.file("s7"), "--data", corpus(),
                                     "--split", "test", "--json", "--threads", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result e = run(args);
    EXPECT_EQ(e.code, 0) << e.err;
    return nlohmann::json::parse(e.out)["loss"].get<double>();
  };
  const double by_default = eval({});
  EXPECT_EQ(by_default, eval({"--split-seed", "0"}));  // the split the source was trained on
  EXPECT_NE(by_default, eval({"--seed", "7"}));
  // An explicit --split-seed wins and is recorded.
  r = finetune(dir_->file("reference"), t.file("split3"), {"--split-seed", "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(manifest(t.file("split3"))["split_seed"], 3);
  // A manifest from before split_seed existed: its seed was also its split's.
  fs::copy(dir_->file("reference"), t.file("old"), fs::copy_options::recursive);
  nlohmann::json old = manifest(t.file("old"));
  old.erase("split_seed");
  old["seed"] = 5;
  std::ofstream(t.file("old/recast_manifest.json")) << old.dump();
  r = finetune(t.file("old"), t.file("from-old"), {});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(manifest(t.file("from-old"))["split_seed"], 5);
  expect_one_line_error(finetune(dir_->file("reference"), t.file("x"), {"--split-seed", "-1"}), 2,
                        "--split-seed");
  EXPECT_FALSE(fs::exists(t.file("x")));
}

// T-CNN end to end on images: convert with a report on the data, fine-tune
// (gates and attention distances logged), evaluate under corruptions against
// the CNN as baseline (CE per corruption, mCE).
// A small CNN on an image folder, converted to T-CNN and fine-tuned, built
// once for the three tests below (each checks one verb).
struct TcnnChain {
  std::unique_ptr<TempDir> dir;
  Result pretrain, convert, finetune;
  std::string file(const std::string& name) const { return dir->file(name); }
};

const TcnnChain& tcnn_chain() {
  static TcnnChain c;
  if (c.dir) return c;
  c.dir = std::make_unique<TempDir>();
  image_folder(c.file("imgs"), 3, 20);
  // At 24 px (the loader resizes the 16 px images), with random crops and
  // flips; every later verb takes the size from the manifest.
  c.pretrain = run({"pretrain", "--arch", "resnet18", "--set", "channels=[4,8,8,8]", "--data",
                    c.file("imgs"), "--steps", "4", "--batch-size", "8", "--out", c.file("cnn"),
                    "--no-progress", "--threads", "2", "--image-size", "24", "--crop-pad", "2", "--hflip"});
  if (c.pretrain.code != 0) return c;
  c.convert = run({"convert", "--recipe", "tcnn", "--model", c.file("cnn"), "--out", c.file("tcnn"),
                   "--layers", "layer[34]\\.", "--data", c.file("imgs"), "--threads", "2"});
  if (c.convert.code != 0) return c;
  c.finetune = run({"finetune", "--model", c.file("tcnn"), "--data", c.file("imgs"), "--steps", "4",
                    "--batch-size", "8", "--eval-every", "2", "--out", c.file("ft"), "--no-progress",
                    "--threads", "2"});
  return c;
}

TEST_F(TrainCli, TcnnConvertKeepsThePredictions) {
  const TcnnChain& c = tcnn_chain();
  ASSERT_EQ(c.pretrain.code, 0) << c.pretrain.err;
  ASSERT_EQ(c.convert.code, 0) << c.convert.err;
  EXPECT_NE(c.convert.err.find("same predictions"), std::string::npos) << c.convert.err;
  // The image size travels: the CNN's manifest and config, the T-CNN's and
  // the fine-tune's manifests (eval, convert and finetune resize to it).
  const auto cnn = nlohmann::json::parse(read_bytes(c.file("cnn/recast_manifest.json")));
  EXPECT_EQ(cnn["image_size"], 24);
  EXPECT_EQ(cnn["augment"], (nlohmann::json{{"crop_pad", 2}, {"hflip", true}}));
  const auto config = nlohmann::json::parse(read_bytes(c.file("cnn/config.json")));
  EXPECT_EQ(config["pretrained_cfg"]["input_size"], (nlohmann::json{1, 24, 24}));
  EXPECT_EQ(nlohmann::json::parse(read_bytes(c.file("tcnn/recast_manifest.json")))["image_size"], 24);
  if (c.finetune.code == 0) {
    EXPECT_EQ(nlohmann::json::parse(read_bytes(c.file("ft/recast_manifest.json")))["image_size"], 24);
    EXPECT_NE(c.finetune.err.find("given as 1x24x24"), std::string::npos) << c.finetune.err;
  }
  // Text is not resized.
  expect_one_line_error(run({"pretrain", "--arch", "gpt2", "--data", corpus(), "--image-size", "32", "--steps", "1",
                             "--out", c.file("nope")}),
                        2, "--image-size: --data");
}

TEST_F(TrainCli, TcnnFinetuneLogsGatesAndDistances) {
  const TcnnChain& c = tcnn_chain();
  ASSERT_EQ(c.finetune.code, 0) << c.convert.err << c.finetune.err;
  std::ifstream in(c.file("ft/metrics.jsonl"));
  std::string line;
  int tcnn_lines = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["split"] != "tcnn") continue;
    ++tcnn_lines;
    ASSERT_TRUE(j["layers"].contains("layer4.1.conv2")) << line;
    EXPECT_EQ(j["layers"]["layer4.1.conv2"]["gate"].size(), 9u) << line;
    EXPECT_EQ(j["layers"]["layer4.1.conv2"]["distance"].size(), 9u) << line;
  }
  EXPECT_GE(tcnn_lines, 2) << "at each evaluation and at the end";
  // The CNN it came from has no ConvAttention: no statistics, no extra forward.
  std::ifstream cnn(c.file("cnn/metrics.jsonl"));
  while (std::getline(cnn, line)) EXPECT_EQ(line.find("\"tcnn\""), std::string::npos) << line;
}

TEST_F(TrainCli, TcnnCorruptionEvalAgainstTheCnn) {
  const TcnnChain& c = tcnn_chain();
  ASSERT_EQ(c.finetune.code, 0) << c.convert.err << c.finetune.err;
  Result ev = run({"eval", "--model", c.file("ft"), "--data", c.file("imgs"), "--split", "all",
                   "--corrupt", "gaussian_noise:5,contrast", "--baseline", c.file("cnn"), "--json",
                   "--threads", "2"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  auto j = nlohmann::json::parse(ev.out);
  EXPECT_EQ(j["accuracy"]["gaussian_noise"].size(), 1u);
  EXPECT_EQ(j["accuracy"]["contrast"].size(), 5u);
  EXPECT_TRUE(j["ce"].contains("contrast"));
  EXPECT_TRUE(j.contains("mce"));
  // The clean accuracy is the plain evaluation's on the same split.
  Result plain = run({"eval", "--model", c.file("ft"), "--data", c.file("imgs"), "--split", "all",
                      "--json", "--threads", "2"});
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_DOUBLE_EQ(j["clean"].get<double>(), nlohmann::json::parse(plain.out)["accuracy"].get<double>());
  expect_one_line_error(run({"eval", "--model", c.file("ft"), "--data", c.file("imgs"), "--corrupt",
                             "fog"}),
                        2, "unknown corruption 'fog'");
  expect_one_line_error(run({"eval", "--model", c.file("ft"), "--data", c.file("imgs"), "--baseline",
                             c.file("cnn")}),
                        2, "--baseline needs --corrupt");
}

TEST_F(TrainCli, ConvertToT2RReportsEachLayerAndTransferReducesItsError) {
  const std::string& out = t2r_model();
  auto manifest = nlohmann::json::parse(read_bytes(out + "/recast_manifest.json"));
  EXPECT_EQ(manifest["error_at_init"][0]["module"], "transformer.h.0.attn");
  EXPECT_EQ(manifest["conversion"]["recipe"], "t2r");
  expect_transfer_lowered_each_layer(manifest, 2);
  // The transfer is a training run: its curve (a line per 10 steps) falls.
  const auto& curve = manifest["attention_transfer"]["curve"];
  ASSERT_EQ(curve.size(), 2u);
  EXPECT_EQ(curve[1]["step"], 20);
  EXPECT_LT(curve[1]["mse_sum"].get<double>(), curve[0]["mse_sum"].get<double>());
  // Nothing of the scratch run is left in the converted directory.
  EXPECT_FALSE(fs::exists(out + "/.work"));
  EXPECT_FALSE(fs::exists(out + "/checkpoints"));
}

TEST_F(TrainCli, T2REvaluatesAndGeneratesWithoutFlags) {
  const std::string& out = t2r_model();
  expect_evaluates_and_generates(out);
}

TEST_F(TrainCli, T2RFinetunesAndBenchmarksWithoutFlags) {
  const std::string& out = t2r_model();
  TempDir t;
  Result ft = run({"finetune", "--model", out, "--data", corpus(), "--seq-len", "32", "--batch-size",
                   "4", "--steps", "3", "--out", t.file("ft"), "--no-progress", "--threads", "2"});
  ASSERT_EQ(ft.code, 0) << ft.err;
  auto config = nlohmann::json::parse(read_bytes(t.file("ft/config.json")));
  EXPECT_TRUE(config.contains("recast_t2r"));
  Result bench = run({"bench", "decode", "--model", out, "--context", "20", "--new-tokens", "4",
                      "--json"});
  ASSERT_EQ(bench.code, 0) << bench.err;
  EXPECT_EQ(nlohmann::json::parse(bench.out)["attention"], "t2r");
}

// A hybrid keeps the unselected layer softmax; bad options are one-line
// errors that leave nothing behind.
TEST_F(TrainCli, T2RHybridAndMisuse) {
  TempDir t;
  Result hybrid = run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"), "--out",
                       t.file("hybrid"), "--layers", "h\\.1\\."});
  ASSERT_EQ(hybrid.code, 0) << hybrid.err;
  auto hm = nlohmann::json::parse(read_bytes(t.file("hybrid/recast_manifest.json")));
  EXPECT_EQ(hm["conversion"]["layers"], nlohmann::json::array({"transformer.h.1.attn"}));
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"),
                             "--out", t.file("x"), "--layers", "layer4"}),
                        2, "matches none");
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"),
                             "--out", t.file("hybrid")}),
                        2, "exists and is not empty");
  expect_one_line_error(run({"convert", "--recipe", "nope", "--model", dir_->file("reference"),
                             "--out", t.file("y")}),
                        2, "unknown recipe 'nope'");
  // Another recipe's option, and attention transfer without data.
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"),
                             "--out", t.file("z"), "--rank-ratio", "0.5"}),
                        2, "--rank-ratio is an option of --recipe factorize, not t2r");
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"),
                             "--out", t.file("z"), "--transfer-steps", "3"}),
                        2, "--transfer-steps needs --data");
  for (const char* name : {"x", "y", "z"}) EXPECT_FALSE(fs::exists(t.file(name))) << name;
}

// Recipe conv on the reference GPT: lightweight blocks fitted to the
// attention they replace (attention transfer lowers every layer's error),
// then every verb takes the converted checkpoint as is.
TEST_F(TrainCli, ConvertToConvTransfersAndEveryVerbTakesIt) {
  TempDir t;
  const std::string out = t.file("conv");
  Result convert = run({"convert", "--recipe", "conv", "--model", dir_->file("reference"), "--out", out,
                        "--kernel", "7", "--data", corpus(), "--seq-len", "32", "--batch-size", "4",
                        "--transfer-steps", "20", "--transfer-lr", "3e-3", "--threads", "2"});
  ASSERT_EQ(convert.code, 0) << convert.err;
  auto manifest = nlohmann::json::parse(read_bytes(out + "/recast_manifest.json"));
  EXPECT_EQ(manifest["conversion"]["recipe"], "conv");
  expect_transfer_lowered_each_layer(manifest, 2);
  EXPECT_FALSE(fs::exists(out + "/.work"));
  expect_evaluates_and_generates(out);
  Result ft = run({"finetune", "--model", out, "--data", corpus(), "--seq-len", "32", "--batch-size",
                   "4", "--steps", "3", "--out", t.file("ft"), "--no-progress", "--threads", "2"});
  ASSERT_EQ(ft.code, 0) << ft.err;
  EXPECT_TRUE(nlohmann::json::parse(read_bytes(t.file("ft/config.json"))).contains("recast_conv"));
  Result bench = run({"bench", "decode", "--model", out, "--context", "20", "--new-tokens", "4", "--json"});
  ASSERT_EQ(bench.code, 0) << bench.err;
  EXPECT_EQ(nlohmann::json::parse(bench.out)["attention"], "conv");
  // A flag two recipes declare reaches the chosen one's range check; misuse
  // leaves nothing behind.
  expect_one_line_error(run({"convert", "--recipe", "conv", "--model", dir_->file("reference"), "--out",
                             t.file("x"), "--kernel", "5000"}),
                        2, "--kernel");
  expect_one_line_error(run({"convert", "--recipe", "conv", "--model", dir_->file("reference"), "--out",
                             t.file("x"), "--feature-dim", "4"}),
                        2, "--feature-dim is an option of --recipe t2r, not conv");
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"), "--out",
                             t.file("x"), "--kernels", "3,5"}),
                        2, "--kernels is an option of --recipe conv, not t2r");
  EXPECT_FALSE(fs::exists(t.file("x")));
}

// An unknown config key given with --set is refused before any training.
TEST_F(TrainCli, PretrainRefusesAConfigTypo) {
  TempDir t;
  auto args = pretrain_args(corpus(), t.file("out"));
  args.push_back("--set");
  args.push_back("n_layers=1");
  expect_one_line_error(run(args), 1, "'n_layers' is not a key of this model (did you mean 'n_layer'?)");
  EXPECT_FALSE(fs::exists(t.file("out")));
}

// factorize through the CLI: the report, what inspect counts, data-aware factors.
TEST_F(TrainCli, FactorizeReportsWhatInspectCountsAndWhitens) {
  TempDir t;
  const std::string f = factorized_model();
  const std::string& out = *factorize_output_;
  EXPECT_NE(out.find("transformer.h.1.mlp.c_fc"), std::string::npos) << out;
  EXPECT_NE(out.find("rel error"), std::string::npos) << out;
  auto manifest = nlohmann::json::parse(read_bytes(f + "/recast_manifest.json"));
  const auto& conv = manifest["conversion"];
  Result inspect = run({"inspect", f, "--json", "--summary"});
  ASSERT_EQ(inspect.code, 0) << inspect.err;
  EXPECT_EQ(nlohmann::json::parse(inspect.out)["parameters"], conv["params_after"]);
  EXPECT_LE(conv["params_fraction"].get<double>(), 0.5);
  EXPECT_TRUE(std::isfinite(conv["logits_change"]["relative"].get<double>()));
  // Data-aware factors on 2 training batches: each layer's outputs at most
  // as far off as the plain SVD's at the same rank.
  Result w = run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"), "--out",
                  t.file("w50"), "--params", "0.5", "--data", corpus(), "--seq-len", "32",
                  "--batch-size", "4", "--whiten", "2", "--threads", "2"});
  ASSERT_EQ(w.code, 0) << w.err;
  EXPECT_NE(w.out.find("out error"), std::string::npos) << w.out;
  auto wm = nlohmann::json::parse(read_bytes(t.file("w50/recast_manifest.json")))["conversion"];
  EXPECT_EQ(wm["options"]["whiten"], 2);
  EXPECT_EQ(wm["options"]["whiten_damp"], 0.01);
  EXPECT_LE(wm["params_fraction"].get<double>(), 0.5);
  for (const auto& row : wm["layers"]) {
    if (row["rank"] == "dense") continue;
    EXPECT_LE(row["output_error"].get<double>(),
              row["output_error_plain_svd"].get<double>() * (1 + 1e-6)) << row["module"];
  }
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                             "--out", t.file("x"), "--params", "0.5", "--whiten", "2"}),
                        2, "--whiten");
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                             "--out", t.file("x"), "--params", "0.5", "--whiten-damp", "0.1"}),
                        2, "--whiten-damp");
  EXPECT_FALSE(fs::exists(t.file("x")));
}

// finetune the factorized GPT with Frobenius decay (logged each step), merge, eval.
TEST_F(TrainCli, FactorizeFinetuneWithFrobeniusDecayThenMerge) {
  TempDir t;
  const std::string f = factorized_model();
  const std::vector<std::string> ft = {"finetune", "--model", f, "--data", corpus(), "--seq-len", "32",
                                       "--batch-size", "4", "--steps", "3", "--log-every", "1",
                                       "--no-progress", "--threads", "2"};
  std::vector<std::string> with_fd = ft;
  for (const char* a : {"--frobenius-decay", "0.01", "--out"}) with_fd.push_back(a);
  with_fd.push_back(t.file("ft"));
  Result r = run(with_fd);
  ASSERT_EQ(r.code, 0) << r.err;
  int64_t lines = 0;
  std::ifstream metrics(t.file("ft/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["split"] != "train") continue;
    ++lines;
    EXPECT_GT(j["frobenius"].get<double>(), 0.0) << line;
  }
  EXPECT_EQ(lines, 3);
  Result m = run({"convert", "--recipe", "merge", "--model", t.file("ft"), "--out", t.file("merged")});
  ASSERT_EQ(m.code, 0) << m.err;
  auto config = nlohmann::json::parse(read_bytes(t.file("merged/config.json")));
  EXPECT_FALSE(config.contains("recast_factorized"));
  Result ev = run({"eval", "--model", t.file("merged"), "--data", corpus(), "--json", "--threads", "2"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  // The merged dense model computes what its factors did.
  Result ev_ft = run({"eval", "--model", t.file("ft"), "--data", corpus(), "--json", "--threads", "2"});
  ASSERT_EQ(ev_ft.code, 0) << ev_ft.err;
  const double merged = nlohmann::json::parse(ev.out)["perplexity"].get<double>();
  const double factored = nlohmann::json::parse(ev_ft.out)["perplexity"].get<double>();
  EXPECT_NEAR(merged, factored, 1e-4 * factored);
}

// --fd-attention on the dense GPT, and misuse of Frobenius decay and of the recipes.
TEST_F(TrainCli, FrobeniusDecayOnAttentionAndMisuse) {
  TempDir t;
  const std::string f = factorized_model();
  const std::vector<std::string> ft = {"finetune", "--model", f, "--data", corpus(), "--seq-len", "32",
                                       "--batch-size", "4", "--steps", "3", "--log-every", "1",
                                       "--no-progress", "--threads", "2"};
  // Frobenius decay on the dense model's attention products (--fd-attention).
  std::vector<std::string> attn = ft;
  attn[2] = dir_->file("reference");
  for (const char* a : {"--frobenius-decay", "0.01", "--fd-attention", "--out"}) attn.push_back(a);
  attn.push_back(t.file("fd-attn"));
  Result a = run(attn);
  ASSERT_EQ(a.code, 0) << a.err;
  // Bad requests: one line, exit 2, nothing written.
  std::vector<std::string> dense_fd = ft;
  dense_fd[2] = dir_->file("reference");
  for (const char* x : {"--frobenius-decay", "0.01", "--out"}) dense_fd.push_back(x);
  dense_fd.push_back(t.file("x"));
  expect_one_line_error(run(dense_fd), 2, "no trained factorized layers");
  std::vector<std::string> no_lambda = ft;
  for (const char* x : {"--fd-attention", "--out"}) no_lambda.push_back(x);
  no_lambda.push_back(t.file("x"));
  expect_one_line_error(run(no_lambda), 2, "--fd-attention");
  expect_one_line_error(run({"finetune", "--model",
                             std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/resnet18_timm",
                             "--data", "fashion-mnist", "--steps", "1", "--frobenius-decay", "0.01",
                             "--fd-attention", "--out", t.file("x")}),
                        2, "no dense multi-head attention");
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                             "--out", t.file("x")}),
                        2, "exactly one of");
  expect_one_line_error(run({"convert", "--recipe", "t2r", "--model", dir_->file("reference"),
                             "--out", t.file("x"), "--rank-ratio", "0.5"}),
                        2, "--recipe factorize");
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                             "--out", t.file("x"), "--params", "0.001"}),
                        2, "unreachable");
  expect_one_line_error(run({"convert", "--recipe", "merge", "--model", dir_->file("reference"),
                             "--out", t.file("x")}),
                        2, "no factorized layers");
  EXPECT_FALSE(fs::exists(t.file("x")));
}

// ------------------------------------------------------------ faults

// A pid that no process has: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

// Entries of `dir` whose names start with `prefix`.
std::vector<std::string> entries_starting(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  }
  return out;
}

template <typename F>
bool wait_until(F done, int seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// SIGINT during convert's attention transfer: exit 130 and nothing left of the
// output (the hidden temp directory included); the next convert to the same
// place removes temps a kill -9 left (their pid is gone), not others'.
TEST_F(TrainCli, InterruptedConvertLeavesNoTempAndExits130) {
  TempDir t;
  const std::string out = t.file("conv");
  Child child({"convert", "--recipe", "t2r", "--model", dir_->file("reference"), "--out", out,
               "--feature-dim", "16", "--data", corpus(), "--seq-len", "32", "--batch-size", "4",
               "--transfer-steps", "100000000", "--threads", "1"},
              t.file("log"));
  // In the transfer: its metrics are being written inside the temp directory.
  ASSERT_TRUE(wait_until([&] {
    for (const auto& name : entries_starting(t.path(), ".conv.tmp-")) {
      if (logged_step(t.file(name + "/.work/transfer")) >= 1) return true;
    }
    return false;
  })) << read_bytes(t.file("log"));
  child.signal(SIGINT);
  EXPECT_EQ(child.wait(), 130) << read_bytes(t.file("log"));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(entries_starting(t.path(), ".conv").empty()) << "temp or lock left behind";
  EXPECT_NE(read_bytes(t.file("log")).find("interrupted by SIGINT"), std::string::npos);

  // Orphans of a process that is gone are removed; a live process's are not.
  const std::string orphan = t.file(".conv.tmp-" + std::to_string(dead_pid()));
  const std::string live = t.file(".conv.tmp-" + std::to_string(::getppid()));
  fs::create_directories(orphan + "/.work");
  fs::create_directories(live);
  Result r = run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"), "--out", out,
                  "--params", "0.5"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_TRUE(fs::exists(live));
}

// SIGTERM while repack writes its shards: exit 143, the new directory removed.
TEST_F(TrainCli, InterruptedRepackLeavesNothingAndExits143) {
  TempDir t;
  io::NamedTensors tensors;
  for (int i = 0; i < 96; ++i) tensors.emplace_back("w" + std::to_string(i), torch::ones({1 << 18}));
  io::save_safetensors(t.file("big.safetensors"), tensors);  // 96 MB
  const std::string out = t.file("out");
  Child child({"repack", t.file("big.safetensors"), out, "--max-shard-size", "1MB"}, t.file("log"));
  ASSERT_TRUE(wait_until([&] { return !entries_starting(out, "model-").empty(); }))
      << read_bytes(t.file("log"));
  child.signal(SIGTERM);
  EXPECT_EQ(child.wait(), 143) << read_bytes(t.file("log"));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(entries_starting(t.path(), ".out").empty()) << "temp or lock left behind";
}

// One writer per --out: a second one is refused naming the owner's pid; a
// lock left by a process that is gone is taken over with a warning.
TEST_F(TrainCli, OneWriterPerOutputDirectory) {
  TempDir t;
  const std::string out = t.file("run");
  {
    io::OutputLock held(out, "--out");
    const std::string owner = "pid " + std::to_string(::getpid());
    expect_one_line_error(run(pretrain_args(corpus(), out, 3)), 1, "in use by another recast (" + owner);
    expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                               "--out", out, "--params", "0.5"}),
                          1, owner);
    expect_one_line_error(run({"repack", dir_->file("reference"), out}), 1, owner);
    EXPECT_FALSE(fs::exists(out));
  }
  const pid_t gone = dead_pid();
  write_bytes(t.file(".run.lock"), std::to_string(gone) + "\n");
  auto args = pretrain_args(corpus(), out, 3);
  args.erase(std::find(args.begin(), args.end(), "-q"));
  Result r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("taking over the lock left by pid " + std::to_string(gone)), std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(t.file(".run.lock")));
}

// Data a model cannot take is refused before any work, naming the option.
TEST_F(TrainCli, DataOfTheWrongKindIsRefusedUpFront) {
  TempDir t;
  const std::string fixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";
  expect_one_line_error(run({"convert", "--recipe", "factorize", "--model", dir_->file("reference"),
                             "--out", t.file("a"), "--data", "fashion-mnist"}),
                        2, "--data 'fashion-mnist' is image-classification data");
  expect_one_line_error(run({"convert", "--recipe", "tcnn", "--model", fixtures + "/resnet18_timm",
                             "--out", t.file("b"), "--data", corpus()}),
                        2, "is text data");
  auto teacher = pretrain_args(corpus(), t.file("c"), 3);
  teacher[0] = "finetune";
  teacher[1] = "--model";
  teacher[2] = dir_->file("reference");
  teacher.push_back("--teacher");
  teacher.push_back(fixtures + "/resnet18_timm");
  expect_one_line_error(run(teacher), 2, "--teacher");
  for (const char* name : {"a", "b", "c"}) EXPECT_FALSE(fs::exists(t.file(name))) << name;
}

// A run that fails before its first checkpoint removes the --out it created;
// a bad path for --out is a usage error naming it.
TEST_F(TrainCli, FailedRunLeavesNoOutputAndBadOutPathsAreNamed) {
  TempDir t;
  auto args = pretrain_args(corpus(), t.file("diverged"), 5);
  set_arg(args, "--lr", "1e30");
  set_arg(args, "--save-every", "0");
  Result r = run(args);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_FALSE(fs::exists(t.file("diverged")));
  write_bytes(t.file("file"), "x");
  expect_one_line_error(run(pretrain_args(corpus(), t.file("file"), 3)), 2,
                        "--out '" + t.file("file") + "': exists and is a file");
  expect_one_line_error(run(pretrain_args(corpus(), t.file("no/such/dir"), 3)), 2, "does not exist");
  fs::create_symlink(t.file("loop"), t.file("loop"));
  expect_one_line_error(run(pretrain_args(corpus(), t.file("loop"), 3)), 2, "symlink loop");
  ::mkfifo(t.file("fifo").c_str(), 0600);
  expect_one_line_error(run(pretrain_args(t.file("fifo"), t.file("x"), 3)), 1, "is a FIFO");
  expect_one_line_error(run(pretrain_args("/dev/zero", t.file("x"), 3)), 1, "character device");
  expect_one_line_error(run({"eval", "--model", t.file("nothing"), "--data", corpus()}), 1,
                        "does not exist");
}

}  // namespace
}  // namespace recast::testing
