// SentencePiece through the sentencepiece library with T5's conventions,
// against transformers' T5Tokenizer and T5TokenizerFast (they agree on every
// case; tests/fixtures/tokenizer_spiece, made by tools/make_fixtures.py from a
// unigram model trained with the Python sentencepiece): </s> appended,
// <extra_id_N> = vocab_size - 1 - N, special tokens matched whole; then
// training with the library, save -> load, and bad input.

#include "recast/core/error.h"
#include "recast/io/json_strict.h"
#include "recast/io/sentencepiece.h"
#include "recast/io/tokenizer.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <tuple>

namespace recast::testing {
namespace {

const std::string kDir = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/tokenizer_spiece";

TEST(SentencePiece, MatchesTransformersT5TokenizerIdForId) {
  auto tok = io::load_tokenizer(kDir);
  EXPECT_EQ(tok->kind(), "sentencepiece");
  const auto fixture = io::read_json_file(kDir + "/cases.json");
  EXPECT_EQ(tok->vocab_size(), fixture["vocab"].get<int64_t>());
  EXPECT_EQ(tok->eos_id(), 1);
  ASSERT_GE(fixture["cases"].size(), 12u);
  for (const auto& c : fixture["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok->encode(text), c["ids"].get<std::vector<int64_t>>()) << text;
    EXPECT_EQ(tok->encode_plain(text), c["no_special"].get<std::vector<int64_t>>()) << text;
  }
}

TEST(SentencePiece, SentinelsSitAtTheTopAndDecodeAsText) {
  auto tok = io::load_tokenizer(kDir);
  auto* sp = dynamic_cast<io::SentencePieceTokenizer*>(tok.get());
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(sp->sentinel_id(0), tok->vocab_size() - 1);
  EXPECT_EQ(sp->sentinel_id(99), tok->vocab_size() - 100);
  EXPECT_EQ(sp->sentinel_id(100), -1);
  EXPECT_TRUE(tok->is_special(sp->sentinel_id(5)));
  EXPECT_TRUE(tok->is_special(1));  // </s>
  EXPECT_EQ(tok->decode({sp->sentinel_id(3)}), "<extra_id_3>");
  EXPECT_EQ(tok->encode_plain("<extra_id_7>"), std::vector<int64_t>{sp->sentinel_id(7)});
  const auto ids = tok->encode_plain("The union is strong");
  EXPECT_EQ(tok->decode(ids), "The union is strong");
}

// A tokenizer.model with no tokenizer_config.json: transformers' class for the
// checkpoint's model_type decides what is added. transformers 5.17 adds </s>
// for T5 and nothing for Llama / Mistral (its tokenizers backend adds <s>
// only where tokenizer_config.json's add_bos_token says so; measured on the
// GPU machine, tools/gpu_check_tokenizers.py), and the config's flags win.
// This model has SentencePiece's default nmt_nfkc normaliser, so under
// Mistral's generic backend it is run by SentencePiece itself. The model (tests/fixtures/spm_llama_style: 400 BPE pieces with byte
// fallback, <unk> 0, <s> 1, </s> 2) was made by Debian's spm_train on
// README.md + docs/training.md (blank lines dropped):
//   spm_train --input=corpus.txt --model_prefix=tokenizer --vocab_size=400 --model_type=bpe
//     --byte_fallback=true --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --character_coverage=0.9995
TEST(SentencePiece, WithoutATokenizerConfigTheModelTypeDecidesTheSpecials) {
  const std::string model = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/spm_llama_style/tokenizer.model";
  for (const auto& [type, bos, eos] : {std::tuple<const char*, bool, bool>{"mistral", false, false},
                                       {"llama", false, false}, {"t5", false, true}, {"", false, false},
                                       {"llama+bos", true, false}, {"mistral+bos", true, false}}) {
    TempDir dir;
    std::filesystem::copy_file(model, dir.file("tokenizer.model"));
    std::string t = type;
    if (t.size() > 4 && t.substr(t.size() - 4) == "+bos") {
      t = t.substr(0, t.size() - 4);
      write_bytes(dir.file("tokenizer_config.json"), R"({"add_bos_token": true})");
      write_bytes(dir.file("config.json"), "{\"model_type\": \"" + t + "\"}");
    } else if (!t.empty()) {
      write_bytes(dir.file("config.json"), "{\"model_type\": \"" + t + "\"}");
    }
    auto tok = io::load_tokenizer(dir.path());
    const auto plain = tok->encode_plain("the union");
    ASSERT_FALSE(plain.empty());
    std::vector<int64_t> want;
    if (bos) want.push_back(1);
    want.insert(want.end(), plain.begin(), plain.end());
    if (eos) want.push_back(2);
    EXPECT_EQ(tok->encode("the union"), want) << type;
  }
}

TEST(SentencePiece, TrainsWithTheLibrarySavesAndLoads) {
  std::vector<std::string> lines;
  for (int i = 0; i < 200; ++i) {
    lines.push_back("the union is strong and we shall not fail " + std::to_string(i % 17));
  }
  const std::string proto = io::train_sentencepiece(lines, 30, "unigram");
  const std::string again = io::train_sentencepiece(lines, 30, "unigram");
  EXPECT_EQ(proto, again) << "training is deterministic";
  io::SentencePieceConventions c;
  c.extra_ids = 100;
  c.add_eos = true;
  auto tok = io::SentencePieceTokenizer::from_serialized(proto, c, "trained");
  EXPECT_EQ(tok->vocab_size(), 130);
  TempDir dir;
  tok->save(dir.path());
  auto loaded = io::load_tokenizer(dir.path());
  EXPECT_EQ(loaded->vocab_size(), 130);
  EXPECT_EQ(loaded->encode("we shall not fail"), tok->encode("we shall not fail"));
  EXPECT_EQ(loaded->encode("we shall").back(), 1);
  EXPECT_EQ(read_bytes(dir.file("spiece.model")), proto);
  EXPECT_TRUE(io::train_sentencepiece(lines, 30, "bpe").size() > 0);
  EXPECT_THROW(io::train_sentencepiece(lines, 30, "word"), Error);
  // More pieces than the text can give: the library's reason, one line.
  try {
    io::train_sentencepiece({"ab"}, 5000, "unigram");
    ADD_FAILURE() << "trained 5000 pieces on two letters";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sentencepiece"), std::string::npos) << e.what();
  }
}

TEST(SentencePiece, RefusesBadModelsAndText) {
  TempDir dir;
  write_bytes(dir.file("spiece.model"), "not a model proto at all");
  try {
    io::load_tokenizer(dir.path());
    ADD_FAILURE() << "loaded garbage";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("spiece.model: not a SentencePiece model"), std::string::npos)
        << e.what();
  }
  auto tok = io::load_tokenizer(kDir);
  EXPECT_THROW(tok->encode("bad \xC3 utf8"), Error);
  EXPECT_THROW(tok->decode({tok->vocab_size()}), Error);
  EXPECT_THROW(tok->decode({-1}), Error);
  write_bytes(dir.file("tokenizer_config.json"), R"({"extra_ids": -4})");
  write_bytes(dir.file("spiece.model"), read_bytes(kDir + "/spiece.model"));
  EXPECT_THROW(io::load_tokenizer(dir.path()), Error);
}

}  // namespace
}  // namespace recast::testing
