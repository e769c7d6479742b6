// Tokenizers: GPT-2 byte-level BPE token for token against Hugging Face's
// GPT2Tokenizer and GPT2TokenizerFast (tests/fixtures/tokenizer_bpe, made by
// tools/make_fixtures.py; non-ASCII, whitespace runs, contractions, specials),
// decode(encode(x)) == x, the byte tokenizer, and bad inputs.

#include "recast/io/tokenizer.h"
#include "recast/core/error.h"
#include "recast/io/json_strict.h"
#include "test_util.h"

#include <gtest/gtest.h>

namespace recast::testing {
namespace {

const std::string kDir = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures/tokenizer_bpe";

TEST(BpeTokenizer, MatchesHuggingFaceTokenForToken) {
  auto tok = io::load_tokenizer(kDir);
  EXPECT_EQ(tok->kind(), "gpt2-bpe");
  auto cases = io::read_json_file(kDir + "/cases.json");
  ASSERT_GE(cases.size(), 8u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto expected = c["ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(tok->encode(text), expected) << text;
    EXPECT_EQ(tok->decode(expected), text);
  }
}

TEST(BpeTokenizer, RoundTripsArbitraryUtf8) {
  auto tok = io::load_tokenizer(kDir);
  for (const std::string& text : {std::string("tab\there"), std::string("\xF0\x9F\x98\x80 smile"),
                                  std::string("zero\x00byte", 9), std::string("\r\n\r\n"),
                                  std::string("mixed 123abc ÄÖÜ ß")}) {
    EXPECT_EQ(tok->decode(tok->encode(text)), text);
  }
}

TEST(BpeTokenizer, RejectsInvalidUtf8AndBadIds) {
  auto tok = io::load_tokenizer(kDir);
  EXPECT_THROW(tok->encode("bad \xff\xfe bytes"), Error);
  try {
    tok->decode({1, tok->vocab_size()});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 600 at position 1 is outside the vocabulary"),
              std::string::npos)
        << e.what();
  }
}

TEST(BpeTokenizer, BadFilesAreNamed) {
  TempDir dir;
  write_bytes(dir.file("vocab.json"), R"({"a": 0, "b": 0})");
  write_bytes(dir.file("merges.txt"), "#version: 0.2\na b\n");
  auto error = [&] { return error_of([&] { io::load_tokenizer(dir.path()); }); };
  EXPECT_NE(error().find("is given to two tokens"), std::string::npos) << error();
  write_bytes(dir.file("vocab.json"), read_bytes(kDir + "/vocab.json"));
  write_bytes(dir.file("merges.txt"), "#version: 0.2\na b c\n");
  EXPECT_NE(error().find("merges.txt: line 2: expected two symbols"), std::string::npos) << error();
  write_bytes(dir.file("vocab.json"), R"({"a": 0})");
  write_bytes(dir.file("merges.txt"), "");
  EXPECT_NE(error().find("not a byte-level BPE vocabulary"), std::string::npos) << error();
  TempDir empty;
  EXPECT_THROW(io::load_tokenizer(empty.path()), Error);
}

TEST(ByteTokenizer, BytesAndSpecials) {
  io::ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 257);
  auto ids = tok.encode("a<|endoftext|>\xc3\xa9");
  EXPECT_EQ(ids, (std::vector<int64_t>{97, 256, 0xc3, 0xa9}));
  EXPECT_EQ(tok.decode(ids), "a<|endoftext|>\xc3\xa9");
  EXPECT_THROW(tok.decode({257}), Error);
}

}  // namespace
}  // namespace recast::testing
