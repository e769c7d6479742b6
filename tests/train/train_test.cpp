// The training engine's parts, each against an obviously right reference:
// AdamW against torch::optim::AdamW, the schedule and clipping against their
// formulas, distillation against a direct KL, the loader's position round
// trip, splits, and the data readers' errors.

#include "recast/io/image_data.h"
#include "recast/io/text_data.h"
#include "recast/io/tokenizer.h"
#include "recast/train/data.h"
#include "recast/train/objectives.h"
#include "recast/train/optim.h"
#include "recast/train/trainer.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <numeric>
#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <set>

namespace recast::testing {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- optimizer

TEST(AdamW, MatchesTorchAdamWOverSeveralSteps) {
  torch::manual_seed(0);
  at::Tensor w1 = torch::randn({5, 3}).requires_grad_(), b1 = torch::randn({3}).requires_grad_();
  at::Tensor w2 = w1.detach().clone().requires_grad_(), b2 = b1.detach().clone().requires_grad_();
  train::AdamW ours({{"decay", 0.1, {"w"}, {w1}}, {"no_decay", 0.0, {"b"}, {b1}}}, {0.9, 0.95, 1e-8});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{w2},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<at::Tensor>{b2},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  torch::optim::AdamW reference(groups, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 5; ++step) {
    at::Tensor x = torch::randn({4, 5});
    (x.matmul(w1) + b1).pow(2).sum().backward();
    (x.matmul(w2) + b2).pow(2).sum().backward();
    ours.step(1e-2);
    reference.step();
    for (auto* p : {&w1, &b1}) p->mutable_grad() = at::Tensor();
    reference.zero_grad();
  }
  EXPECT_TRUE(torch::allclose(w1, w2, 1e-6, 1e-7)) << (w1 - w2).abs().max();
  EXPECT_TRUE(torch::allclose(b1, b2, 1e-6, 1e-7)) << (b1 - b2).abs().max();
  EXPECT_EQ(ours.steps(), 5);
}

TEST(AdamW, StateRoundTripsAndRejectsForeignState) {
  at::Tensor w = torch::ones({2, 2}).requires_grad_();
  train::AdamW opt({{"decay", 0.1, {"w"}, {w}}}, {});
  w.sum().backward();
  opt.step(0.1);
  io::NamedTensors state = opt.state();
  at::Tensor w2 = torch::ones({2, 2}).requires_grad_();
  train::AdamW again({{"decay", 0.1, {"w"}, {w2}}}, {});
  again.load_state(state);
  EXPECT_EQ(again.steps(), 1);
  EXPECT_TRUE(torch::equal(again.state()[0].second, state[0].second));
  at::Tensor other = torch::ones({3}).requires_grad_();
  train::AdamW wrong({{"decay", 0.1, {"w"}, {other}}}, {});
  EXPECT_NE(error_of([&] { wrong.load_state(state); }).find("'exp_avg/w': expected"),
            std::string::npos);
}

TEST(AdamW, ParamGroupsExemptBiasesNormsAndEmbeddings) {
  std::vector<std::pair<std::string, at::Tensor>> params = {
      {"transformer.wte.weight", torch::zeros({10, 4})},
      {"transformer.h.0.attn.c_attn.weight", torch::zeros({4, 12})},
      {"transformer.h.0.attn.c_attn.bias", torch::zeros({12})},
      {"transformer.h.0.ln_1.weight", torch::zeros({4})},
      {"layer1.0.bn1.weight", torch::zeros({4})},
      {"layer1.0.conv1.weight", torch::zeros({4, 4, 3, 3})}};
  auto groups = train::default_param_groups(params, 0.1);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].names,
            (std::vector<std::string>{"transformer.h.0.attn.c_attn.weight", "layer1.0.conv1.weight"}));
  EXPECT_DOUBLE_EQ(groups[0].weight_decay, 0.1);
  EXPECT_EQ(groups[1].names.size(), 4u);
  EXPECT_DOUBLE_EQ(groups[1].weight_decay, 0.0);
}

TEST(Schedule, WarmupThenCosineToTheFloor) {
  EXPECT_DOUBLE_EQ(train::cosine_lr(0, 100, 10, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(train::cosine_lr(9, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(train::cosine_lr(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(train::cosine_lr(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);  // half way: (1 + 0.1) / 2
  EXPECT_NEAR(train::cosine_lr(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

TEST(Clip, ScalesToMaxNormAndReportsTheNormBefore) {
  at::Tensor a = torch::zeros({2}).requires_grad_(), b = torch::zeros({1}).requires_grad_();
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  at::Tensor norm = train::clip_grad_norm({a, b}, 1.0);
  EXPECT_NEAR(norm.item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-6);
  train::clip_grad_norm({a, b}, 10.0);  // under the limit: unchanged
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-6);
}

// ---------------------------------------------------------------- objectives

TEST(Objectives, DistillationIsTemperatureScaledKl) {
  torch::manual_seed(1);
  at::Tensor s = torch::randn({2, 3, 7}), t = torch::randn({2, 3, 7});
  const double temp = 2.0;
  at::Tensor p = torch::softmax(t / temp, -1), q = torch::softmax(s / temp, -1);
  const double expected = (p * (p.log() - q.log())).sum(-1).mean().item<double>() * temp * temp;
  EXPECT_NEAR(train::distillation_kl(s, t, temp).item<double>(), expected, 1e-6);
  EXPECT_NEAR(train::distillation_kl(t, t, temp).item<double>(), 0.0, 1e-7);
}

TEST(Objectives, ClassificationLabelOutOfRangeIsAnError) {
  at::Tensor logits = torch::zeros({2, 3});
  EXPECT_NE(error_of([&] { train::classification_loss(logits, torch::tensor({0L, 3L})); })
                .find("label 3 out of range for a model with 3 classes"),
            std::string::npos);
}

TEST(Objectives, CausalLmLossIsMeanTokenCrossEntropy) {
  at::Tensor logits = torch::zeros({1, 2, 4});
  at::Tensor labels = torch::tensor({{1L, 2L}});
  EXPECT_NEAR(train::causal_lm_loss(logits, labels).item<double>(), std::log(4.0), 1e-6);
}

// ---------------------------------------------------------------- loader

TEST(Loader, PositionRoundTripContinuesTheSameSequence) {
  train::Loader a(103, 8, 42, true, true);
  for (int i = 0; i < 17; ++i) a.next();  // into the second epoch
  EXPECT_EQ(a.epoch(), 1);
  const nlohmann::json saved = a.state();
  train::Loader b(103, 8, 42, true, true);
  b.restore(nlohmann::json::parse(saved.dump()));
  for (int i = 0; i < 40; ++i) EXPECT_EQ(a.next(), b.next()) << "batch " << i;
  train::Loader other(103, 16, 42, true, true);
  EXPECT_NE(error_of([&] { other.restore(saved); }).find("different --data, --batch-size"),
            std::string::npos);
}

TEST(Loader, EachEpochIsAPermutationAndEpochsDiffer) {
  train::Loader l(20, 5, 7, true, true);
  std::vector<int64_t> e0, e1;
  for (int i = 0; i < 4; ++i) for (auto x : l.next()) e0.push_back(x);
  for (int i = 0; i < 4; ++i) for (auto x : l.next()) e1.push_back(x);
  EXPECT_EQ(std::set<int64_t>(e0.begin(), e0.end()).size(), 20u);
  EXPECT_EQ(std::set<int64_t>(e1.begin(), e1.end()).size(), 20u);
  EXPECT_NE(e0, e1);
  EXPECT_EQ(train::permutation(50, 3), train::permutation(50, 3));
  EXPECT_NE(train::permutation(50, 3), train::permutation(50, 4));
}

TEST(Loader, EvalLoaderKeepsTheShortLastBatch) {
  train::Loader l(10, 4, 0, false, false);
  EXPECT_EQ(l.batches_per_epoch(), 3);
  l.next(), l.next();
  EXPECT_EQ(l.next(), (std::vector<int64_t>{8, 9}));
}

TEST(Loader, FewerExamplesThanABatchIsAnEmptyDataSet) {
  EXPECT_NE(error_of([] { train::Loader(3, 8, 0, true, true); }).find("empty data set"),
            std::string::npos);
}

// ---------------------------------------------------------------- data sets

std::string corpus(size_t bytes, uint64_t seed) {
  const char* words[] = {"the ", "union ", "is ", "strong ", "and ", "we ", "shall ", "endure. "};
  std::string s;
  uint64_t x = seed;
  while (s.size() < bytes) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    s += words[(x >> 33) % 8];
  }
  return s;
}

// Text to text (an encoder-decoder's labelled data): every input and target
// ends with </s> whatever the tokenizer appends, so that a short target
// ("ham" beside "spam") learns to stop, and the labels of a shorter target
// are its tokens, </s>, then -100.
TEST(Data, TextToTextTargetsEndWithEos) {
  TempDir dir;
  std::string rows;
  for (int i = 0; i < 40; ++i) {
    rows += nlohmann::json({{"text", "mail " + std::to_string(i)}, {"label", i % 3 ? "ham" : "spam"}}).dump() + "\n";
  }
  write_bytes(dir.file("mail.jsonl"), rows);
  io::ByteTokenizer tok({"</s>"});
  const int64_t eos = tok.eos_id();
  ASSERT_GE(eos, 0);
  train::DataOptions o{dir.file("mail.jsonl"), "train", 3, 32, "text"};
  o.text_to_text = true;
  auto data = train::open_dataset(o, &tok);
  std::vector<int64_t> all(static_cast<size_t>(data->size()));
  std::iota(all.begin(), all.end(), 0);
  const train::Example ex = data->batch(all);
  ASSERT_EQ(ex.labels.size(1), 5);  // "spam" + </s>
  bool ham = false, spam = false;
  for (int64_t r = 0; r < ex.labels.size(0); ++r) {
    const auto row = ex.labels[r];
    const bool is_ham = row[3].item<int64_t>() == eos;
    if (is_ham) {
      EXPECT_EQ(row[4].item<int64_t>(), -100);
    } else {
      EXPECT_EQ(row[4].item<int64_t>(), eos);
    }
    ham = ham || is_ham, spam = spam || !is_ham;
    const int64_t n = ex.inputs.attention_mask[r].sum().item<int64_t>();
    EXPECT_EQ(ex.inputs.input_ids[r][n - 1].item<int64_t>(), eos);
  }
  EXPECT_TRUE(ham && spam);
}

TEST(Data, TextSplitsAreDisjointDeterministicAndCoverTheCorpus) {
  TempDir dir;
  for (int i = 0; i < 40; ++i) write_bytes(dir.file("doc" + std::to_string(i) + ".txt"), corpus(500, i));
  io::ByteTokenizer tok;
  train::DataOptions o{dir.path(), "train", 3, 32, "text"};
  auto train_set = train::open_dataset(o, &tok);
  o.split = "val";
  auto val = train::open_dataset(o, &tok);
  o.split = "test";
  auto test = train::open_dataset(o, &tok);
  EXPECT_GT(train_set->size(), 10 * val->size());
  EXPECT_GT(val->size(), 0);
  EXPECT_GT(test->size(), 0);
  train::Example ex = train_set->batch({0, 1});
  EXPECT_EQ(ex.inputs.input_ids.sizes(), (std::vector<int64_t>{2, 32}));
  // Labels are the inputs shifted by one.
  EXPECT_TRUE(torch::equal(ex.inputs.input_ids[0].slice(0, 1), ex.labels[0].slice(0, 0, 31)));
  EXPECT_EQ(ex.bytes, 64);  // both windows lie inside the first document: no specials
  o.split = "train";
  auto again = train::open_dataset(o, &tok);
  EXPECT_TRUE(torch::equal(again->batch({5}).inputs.input_ids, train_set->batch({5}).inputs.input_ids));
}

TEST(Data, JsonlTextFieldAndErrorsNameFileAndLine) {
  TempDir dir;
  write_bytes(dir.file("a.jsonl"), "{\"text\": \"hello\"}\n\n{\"text\": \"world\"}\n");
  auto docs = io::read_text_documents(dir.file("a.jsonl"));
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1].text, "world");
  EXPECT_EQ(docs[1].source, dir.file("a.jsonl") + ":3");
  write_bytes(dir.file("b.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  EXPECT_NE(error_of([&] { io::read_text_documents(dir.file("b.jsonl")); }).find("b.jsonl:2: no field 'text'"),
            std::string::npos);
  write_bytes(dir.file("c.txt"), std::string("bad \xff utf8"));
  EXPECT_NE(error_of([&] { io::read_text_documents(dir.file("c.txt")); }).find("invalid UTF-8 at byte 4"),
            std::string::npos);
}

TEST(Data, GlobPatternsAndEmptyDataSets) {
  TempDir dir;
  write_bytes(dir.file("x1.txt"), "abc");
  write_bytes(dir.file("x2.txt"), "def");
  write_bytes(dir.file("y.txt"), "ghi");
  auto docs = io::read_text_documents(dir.path() + "/x*.txt");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text + docs[1].text, "abcdef");
  EXPECT_NE(error_of([&] { io::read_text_documents(dir.path() + "/z*.txt"); }).find("no file matches"),
            std::string::npos);
  write_bytes(dir.file("empty.txt"), "");
  EXPECT_NE(error_of([&] { io::read_text_documents(dir.file("empty.txt")); }).find("empty data set"),
            std::string::npos);
  io::ByteTokenizer tok;
  EXPECT_NE(error_of([&] { train::open_dataset({dir.file("y.txt"), "train", 0, 32, "text"}, &tok); })
                .find("empty data set"),
            std::string::npos);
}

TEST(Data, UnknownDataSetNameSaysWhatIsKnown) {
  io::ByteTokenizer tok;
  const std::string e =
      error_of([&] { train::open_dataset({"no-such-set", "train", 0, 32, "text"}, &tok); });
  EXPECT_NE(e.find("'no-such-set': does not exist"), std::string::npos) << e;
  EXPECT_NE(e.find("sotu, moby-dick, spam-assassin, fashion-mnist"), std::string::npos) << e;
}

TEST(Data, LabelledJsonlWithStringAndIntegerLabels) {
  TempDir dir;
  write_bytes(dir.file("s.jsonl"),
              "{\"text\": \"buy now\", \"label\": \"spam\"}\n{\"text\": \"hi mum\", \"label\": \"ham\"}\n");
  auto s = io::read_labeled_jsonl(dir.file("s.jsonl"));
  EXPECT_EQ(s.classes, (std::vector<std::string>{"ham", "spam"}));
  EXPECT_EQ(s.items[0].label, 1);
  write_bytes(dir.file("m.jsonl"), "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": \"x\"}\n");
  EXPECT_NE(error_of([&] { io::read_labeled_jsonl(dir.file("m.jsonl")); }).find("m.jsonl:2: labels mix"),
            std::string::npos);
  write_bytes(dir.file("n.jsonl"), "{\"text\": \"a\", \"label\": -1}\n");
  EXPECT_NE(error_of([&] { io::read_labeled_jsonl(dir.file("n.jsonl")); }).find("label -1 is negative"),
            std::string::npos);
  EXPECT_EQ(train::sniff_data_kind(dir.file("s.jsonl")), train::DataKind::TextClassification);
}

TEST(Data, ImageFolderDecodesPngsPerClassAndChecksSizes) {
  TempDir dir;
  for (const char* cls : {"cat", "dog"}) {
    fs::create_directories(dir.file(cls));
    for (int i = 0; i < 3; ++i) {
      std::vector<uint8_t> rgb(4 * 5 * 3);
      for (size_t k = 0; k < rgb.size(); ++k) rgb[k] = static_cast<uint8_t>(k * 7 + i + (cls[0] == 'd') * 100);
      const std::string path = dir.file(std::string(cls) + "/" + std::to_string(i) + ".png");
      ASSERT_TRUE(stbi_write_png(path.c_str(), 5, 4, 3, rgb.data(), 5 * 3));
    }
  }
  io::ImageSet set = io::read_image_folder(dir.path());
  EXPECT_EQ(set.count, 6);
  EXPECT_EQ(set.channels, 3);
  EXPECT_EQ(set.height, 4);
  EXPECT_EQ(set.width, 5);
  EXPECT_EQ(set.classes, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(set.labels, (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
  // CHW: channel 1 of pixel (0, 1) is the interleaved byte 1 * 3 + 1.
  EXPECT_EQ(set.pixels[static_cast<size_t>(1 * 20 + 1)], static_cast<uint8_t>(4 * 7));
  EXPECT_EQ(train::sniff_data_kind(dir.path()), train::DataKind::ImageClassification);

  std::vector<uint8_t> small(2 * 2 * 3, 9);
  ASSERT_TRUE(stbi_write_png(dir.file("dog/odd.png").c_str(), 2, 2, 3, small.data(), 6));
  EXPECT_NE(error_of([&] { io::read_image_folder(dir.path()); }).find("odd.png: image is 2x2, expected 5x4"),
            std::string::npos);
  write_bytes(dir.file("dog/odd.png"), "not a png");
  EXPECT_NE(error_of([&] { io::read_image_folder(dir.path()); }).find("odd.png: cannot decode image"),
            std::string::npos);
}

TEST(Data, ImageBatchesAreNormalised) {
  TempDir dir;
  fs::create_directories(dir.file("a"));
  std::vector<uint8_t> grey(3 * 3, 255);
  ASSERT_TRUE(stbi_write_png(dir.file("a/x.png").c_str(), 3, 3, 1, grey.data(), 3));
  train::Normalization norm;
  auto data = train::open_dataset({dir.path(), "all", 0, 0, "text"}, nullptr, &norm);
  EXPECT_EQ(norm.mean, std::vector<double>{0.5});
  train::Example ex = data->batch({0});
  EXPECT_EQ(ex.inputs.pixel_values.sizes(), (std::vector<int64_t>{1, 1, 3, 3}));
  EXPECT_NEAR(ex.inputs.pixel_values.max().item<double>(), 1.0, 1e-6);  // (1 - 0.5) / 0.5
}

// --image-size / grey to RGB / --crop-pad / --hflip (train::ImageTransform):
// the resize is torch's bilinear (align_corners false), the channels repeat,
// the augmentation is a shifted, zero-filled, mirrored copy drawn from
// (seed, draw, index) and only in the train split.
TEST(Data, ImageTransformResizesRepeatsAndAugmentsDeterministically) {
  TempDir dir;
  for (const char* c : {"a", "b"}) fs::create_directories(dir.file(c));
  std::vector<uint8_t> px(6 * 6);
  for (int i = 0; i < 36; ++i) px[static_cast<size_t>(i)] = static_cast<uint8_t>(7 * i);
  for (int k = 0; k < 12; ++k) {
    ASSERT_TRUE(stbi_write_png(dir.file(std::string(k % 2 ? "a" : "b") + "/" + std::to_string(k) + ".png").c_str(),
                               6, 6, 1, px.data(), 6));
  }
  train::Normalization norm{{0.0}, {1.0}};
  train::DataOptions o{dir.path(), "all", 0, 0, "text"};
  const at::Tensor plain = train::open_dataset(o, nullptr, &norm)->batch({0}).inputs.pixel_values;
  o.image.size = 15;
  o.image.channels = 3;
  auto data = train::open_dataset(o, nullptr, &norm);
  const at::Tensor big = data->batch({0}).inputs.pixel_values;
  ASSERT_EQ(big.sizes(), (std::vector<int64_t>{1, 3, 15, 15}));
  EXPECT_TRUE(big.select(1, 0).equal(big.select(1, 2)));
  const at::Tensor want = at::upsample_bilinear2d(plain, {15, 15}, false);
  EXPECT_LT((big.select(1, 1) - want.select(1, 0)).abs().max().item<double>(), 1e-6);
  EXPECT_NE(data->describe().find("given as 3x15x15"), std::string::npos) << data->describe();
  // A one-channel normalisation serves the repeated channels.
  EXPECT_EQ(norm.mean.size(), 1u);

  // Augmentation: train split only; the same draw gives the same crops.
  train::DataOptions a{dir.path(), "train", 0, 0, "text"};
  a.image.crop_pad = 2;
  a.image.hflip = true;
  a.image.seed = 5;
  auto train_set = train::open_dataset(a, nullptr, &norm);
  EXPECT_NE(train_set->describe().find("random crop, padding 2, horizontal flip"), std::string::npos);
  const std::vector<int64_t> rows = {0, 1, 2, 3, 4, 5, 6, 7};
  const at::Tensor one = train_set->training_batch(rows, 3).inputs.pixel_values;
  EXPECT_TRUE(one.equal(train_set->training_batch(rows, 3).inputs.pixel_values));
  EXPECT_FALSE(one.equal(train_set->training_batch(rows, 4).inputs.pixel_values));
  // Each augmented image is the stored one shifted by at most 2 pixels and
  // maybe mirrored, zeros where it came from outside.
  const at::Tensor src = plain[0][0];
  int shifted = 0, flipped = 0;
  for (int64_t r = 0; r < one.size(0); ++r) {
    const at::Tensor img = one[r][0];
    bool found = false;
    for (int flip = 0; flip < 2 && !found; ++flip) {
      for (int64_t dy = -2; dy <= 2 && !found; ++dy) {
        for (int64_t dx = -2; dx <= 2 && !found; ++dx) {
          at::Tensor cand = at::zeros({6, 6});
          for (int64_t y = 0; y < 6; ++y) {
            for (int64_t x = 0; x < 6; ++x) {
              const int64_t sy = y + dy, sx = (flip ? 5 - x : x) + dx;
              if (sy >= 0 && sy < 6 && sx >= 0 && sx < 6) cand[y][x] = src[sy][sx];
            }
          }
          if (cand.equal(img)) {
            found = true;
            shifted += dy != 0 || dx != 0;
            flipped += flip;
          }
        }
      }
    }
    EXPECT_TRUE(found) << "row " << r << "\n" << img;
  }
  EXPECT_GT(shifted, 0);
  EXPECT_GT(flipped, 0);
  a.split = "val";
  const auto val = train::open_dataset(a, nullptr, &norm);
  EXPECT_TRUE(val->training_batch({0}, 3).inputs.pixel_values.equal(val->training_batch({0}, 9).inputs.pixel_values));
  // RGB images cannot go to a grey model.
  train::DataOptions bad{dir.path(), "all", 0, 0, "text"};
  bad.image.channels = 2;
  EXPECT_NE(error_of([&] { train::open_dataset(bad, nullptr, &norm); }).find("only grey to RGB"), std::string::npos);
}

TEST(Tokenizer, ByteTokenizerSavesAndLoadsFromACheckpointDirectory) {
  TempDir dir;
  io::ByteTokenizer tok({"<|endoftext|>", "<|pad|>"});
  tok.save(dir.path());
  auto back = io::load_tokenizer(dir.path());
  EXPECT_EQ(back->kind(), "bytes");
  EXPECT_EQ(back->vocab_size(), 258);
  EXPECT_EQ(back->eos_id(), 256);
  EXPECT_TRUE(back->is_special(257));
  EXPECT_EQ(back->encode("a<|pad|>"), (std::vector<int64_t>{97, 257}));
}

TEST(Tokenizer, BpeSavesTheSameVocabularyAndMerges) {
  const std::string fixture = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/tokenizer_bpe";
  auto tok = io::load_tokenizer(fixture);
  TempDir dir;
  dynamic_cast<const io::Tokenizer&>(*tok).save(dir.path());
  auto back = io::load_tokenizer(dir.path());
  const std::string text = "Hello wörld — naïve café 123 <|endoftext|> ok";
  EXPECT_EQ(back->encode(text), tok->encode(text));
  EXPECT_EQ(back->vocab_size(), tok->vocab_size());
  EXPECT_EQ(back->eos_id(), tok->eos_id());
}

TEST(Dist, ReadsTorchrunVariablesAndRejectsMalformedOnes) {
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("RANK", "2", 1);
  ::setenv("MASTER_ADDR", "10.0.0.1", 1);
  ::setenv("MASTER_PORT", "29500", 1);
  train::DistEnv e = train::dist_env();
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.master_addr, "10.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_EQ(e.local_world_size, 4);  // LOCAL_WORLD_SIZE absent: one node
  EXPECT_FALSE(e.launched);  // WORLD_SIZE alone: no launcher
  ::setenv("TORCHELASTIC_RUN_ID", "job", 1);
  EXPECT_TRUE(train::dist_env().launched);
  ::unsetenv("TORCHELASTIC_RUN_ID");
  ::setenv("MASTER_PORT", "70000", 1);
  EXPECT_NE(error_of([] { train::dist_env(); }).find("MASTER_PORT='70000'"), std::string::npos);
  ::setenv("MASTER_PORT", "29500", 1);
  ::setenv("RANK", "4", 1);
  EXPECT_NE(error_of([] { train::dist_env(); }).find("RANK=4 is not below WORLD_SIZE=4"),
            std::string::npos);
  ::setenv("WORLD_SIZE", "two", 1);
  EXPECT_NE(error_of([] { train::dist_env(); }).find("WORLD_SIZE='two'"), std::string::npos);
  for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(v);
  EXPECT_EQ(train::dist_env().world_size, 1);
  EXPECT_FALSE(train::dist_env().launched);
}

}  // namespace
}  // namespace recast::testing
