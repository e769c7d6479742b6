// tokenizer.json (io/hf_tokenizer.h): GPT-2's vocabulary written as a
// tokenizer.json gives transformers' ids for every case of the GPT-2 fixture;
// BPE merges, byte fallback, unknown runs, Unigram's Viterbi path, the split
// behaviours, Metaspace, added tokens (lstrip, rstrip, single_word,
// normalized), templates and decoders do what the tokenizers library defines;
// components recast does not build are refused by name; load_tokenizer's
// precedence.

#include "recast/core/error.h"
#include "recast/io/hf_tokenizer.h"
#include "recast/io/json_strict.h"
#include "recast/io/sentencepiece.h"
#include "recast/io/sentencepiece_model.h"
#include "recast/io/tokenizer.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

namespace recast::testing {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int64_t>;
const std::string kFixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";

std::unique_ptr<io::HfTokenizer> make(const json& j) { return io::HfTokenizer::from_json_text(j.dump(), "tokenizer.json"); }

std::string refusal(const json& j) {
  try {
    make(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// GPT-2 as a tokenizer.json: the byte-level BPE of tests/fixtures/tokenizer_bpe.
json gpt2_json() {
  const json vocab = io::read_json_file(kFixtures + "/tokenizer_bpe/vocab.json");
  std::ifstream in(kFixtures + "/tokenizer_bpe/merges.txt");
  json merges = json::array();
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') merges.push_back(line);
  }
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", vocab.at("<|endoftext|>")}, {"content", "<|endoftext|>"}, {"special", true},
                             {"lstrip", false}, {"rstrip", false}, {"single_word", false}, {"normalized", false}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                     {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
}

TEST(HfTokenizer, Gpt2AsTokenizerJsonGivesTransformersIds) {
  auto tok = make(gpt2_json());
  const json cases = io::read_json_file(kFixtures + "/tokenizer_bpe/cases.json");
  for (const auto& c : cases) {
    const std::string text = c["text"];
    EXPECT_EQ(tok->encode(text), c["ids"].get<Ids>()) << text;
    EXPECT_EQ(tok->decode(tok->encode(text)), text);  // byte-level: lossless
  }
  EXPECT_TRUE(tok->is_special(tok->encode("<|endoftext|>")[0]));
  EXPECT_EQ(tok->eos_id(), tok->encode("<|endoftext|>")[0]);
}

// a=0 b=1 ab=2 ba=3 bb=4; merges "a b", "b a", "b b" in that order.
json abc_bpe(const json& pre_tokenizer) {
  return {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"ba", 3}, {"bb", 4}}},
                     {"merges", {"a b", "b a", "b b"}}}},
          {"pre_tokenizer", pre_tokenizer}};
}

json split(const char* behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", {{"String", "b"}}}, {"behavior", behavior}, {"invert", invert}};
}

TEST(HfTokenizer, BpeMergesByRankAndSplitBehaviours) {
  EXPECT_EQ(make(abc_bpe(nullptr))->encode("aba"), (Ids{2, 0}));   // "a b" first: ab a
  EXPECT_EQ(make(abc_bpe(nullptr))->encode("abba"), (Ids{2, 3}));  // ab, then "b a"
  EXPECT_EQ(make(abc_bpe(split("Isolated")))->encode("aba"), (Ids{0, 1, 0}));
  EXPECT_EQ(make(abc_bpe(split("Removed")))->encode("aba"), (Ids{0, 0}));
  EXPECT_EQ(make(abc_bpe(split("MergedWithPrevious")))->encode("aba"), (Ids{2, 0}));
  EXPECT_EQ(make(abc_bpe(split("MergedWithNext")))->encode("aba"), (Ids{0, 3}));
  EXPECT_EQ(make(abc_bpe(split("Contiguous")))->encode("abba"), (Ids{0, 4, 0}));
  EXPECT_EQ(make(abc_bpe(split("Isolated")))->encode("abba"), (Ids{0, 1, 1, 0}));
  EXPECT_EQ(make(abc_bpe(split("Removed", true)))->encode("aba"), (Ids{1}));  // invert: keep the matches
  // Regex patterns run through PCRE2 with Unicode properties.
  json re = abc_bpe({{"type", "Split"}, {"pattern", {{"Regex", "\\p{L}"}}}, {"behavior", "Isolated"}, {"invert", false}});
  EXPECT_EQ(make(re)->encode("ab"), (Ids{0, 1}));
}

// SentencePiece BPE as transformers converts Llama 2's tokenizer: Prepend and
// Replace normalizers, byte fallback, <s> by the template, and the decoders
// that undo it all.
json llama2_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\u2581", 3}, {"h", 4}, {"i", 5}, {"\u2581h", 6}, {"\u2581hi", 7}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    vocab[buf] = 8 + b;
  }
  return {{"added_tokens", {{{"id", 0}, {"content", "<unk>"}, {"special", true}, {"normalized", false}},
                            {{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                            {{"id", 2}, {"content", "</s>"}, {"special", true}, {"normalized", false}}}},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "\u2581"}},
                                                                 {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
          {"pre_tokenizer", nullptr},
          {"post_processor", {{"type", "TemplateProcessing"},
                              {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                              {"pair", json::array()},
                              {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
          {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                                           {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                           {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
          {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
                     {"vocab", vocab}, {"merges", {"\u2581 h", "\u2581h i"}}}}};
}

TEST(HfTokenizer, ByteFallbackTemplateAndDecodersRoundTrip) {
  auto tok = make(llama2_json());
  EXPECT_EQ(tok->encode("hi"), (Ids{1, 7}));
  EXPECT_EQ(tok->encode_plain("hi"), (Ids{7}));
  // "hi h": ▁hi ▁h ; "é" (C3 A9) by bytes
  EXPECT_EQ(tok->encode_plain("hi h\xC3\xA9"), (Ids{7, 6, 8 + 0xC3, 8 + 0xA9}));
  EXPECT_EQ(tok->encode_plain("<s>hi"), (Ids{1, 7}));  // a special in the text, not normalised
  for (const std::string text : {"hi", "hi h", "h\xC3\xA9 \xF0\x9F\x98\x80 hi", "  hi  "}) {
    EXPECT_EQ(tok->decode(tok->encode_plain(text)), text) << text;
  }
  // An incomplete byte sequence decodes to one U+FFFD per byte, as the library does.
  EXPECT_EQ(tok->decode({8 + 0xC3, 4}), "\xEF\xBF\xBDh");
  EXPECT_EQ(tok->decode({1, 7}), "<s> hi");  // the Strip only takes the first token's space
}

TEST(HfTokenizer, UnknownRunsFuseAndWithoutFallbackBecomeUnk) {
  json j = llama2_json();
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(make(j)->encode_plain("hi\xC3\xA9\xC3\xA9"), (Ids{7, 0}));  // one fused <unk>
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(make(j)->encode_plain("hi\xC3\xA9\xC3\xA9"), (Ids{7, 0, 0}));
}

json unigram_json(bool byte_fallback) {
  json vocab = json::array();
  for (const auto& [piece, score] : std::vector<std::pair<std::string, double>>{
           {"<unk>", 0.0}, {"\u2581", -3.0}, {"a", -2.0}, {"b", -2.0}, {"ab", -1.5}, {"\u2581ab", -1.0}, {"\u2581a", -4.0}}) {
    vocab.push_back(json::array({piece, score}));
  }
  if (byte_fallback) vocab.push_back(json::array({"<0x7A>", -5.0}));
  return {{"normalizer", {{"type", "NFKC"}}},
          {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}}},
          {"decoder", {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}}},
          {"model", {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}, {"byte_fallback", byte_fallback}}}};
}

TEST(HfTokenizer, UnigramTakesTheBestPath) {
  auto tok = make(unigram_json(false));
  EXPECT_EQ(tok->encode("ab"), (Ids{5}));          // ▁ab (-1) over ▁ + ab (-4.5) and ▁a + b (-6)
  EXPECT_EQ(tok->encode("ab ab"), (Ids{5, 5}));    // Metaspace splits before each ▁
  EXPECT_EQ(tok->encode("abzz"), (Ids{5, 0}));     // an unknown run is one <unk>
  EXPECT_EQ(tok->encode("\xEF\xBD\x81" "b"), (Ids{5}));  // NFKC: fullwidth a -> a
  EXPECT_EQ(tok->decode({5, 5}), "ab ab");         // the first token's ▁ is dropped
  auto fallback = make(unigram_json(true));
  EXPECT_EQ(fallback->encode("abz"), (Ids{5, 7}));  // z by its byte
}

TEST(HfTokenizer, AddedTokensStripSingleWordAndNormalized) {
  json j = abc_bpe(nullptr);
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "B"}}}, {"content", "b"}};
  j["added_tokens"] = {{{"id", 10}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"normalized", false}, {"special", true}},
                       {{"id", 11}, {"content", "ab"}, {"single_word", true}, {"normalized", true}, {"special", false}},
                       {{"id", 12}, {"content", "<mm>"}, {"normalized", false}, {"special", true}}};
  auto tok = make(j);
  EXPECT_EQ(tok->encode("a  <m>  b"), (Ids{0, 10, 1}));  // the spaces around <m> are its own
  EXPECT_EQ(tok->encode("a<mm>"), (Ids{0, 12}));         // longest match
  EXPECT_EQ(tok->encode("aB"), (Ids{11}));               // matched after the normalizer
  EXPECT_EQ(tok->encode("aab"), (Ids{0, 2}));            // not a single word: the model's merge
  EXPECT_TRUE(tok->is_special(10));
  EXPECT_FALSE(tok->is_special(11));
  EXPECT_EQ(tok->vocab_size(), 13);
}

TEST(HfTokenizer, UnsupportedComponentsAreRefusedByName) {
  json j = abc_bpe(nullptr);
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "x"}};
  EXPECT_NE(refusal(j).find("tokenizer.json: normalizer: normalizer 'Precompiled' is not supported"), std::string::npos)
      << refusal(j);
  j = abc_bpe({{"type", "Sequence"}, {"pretokenizers", {{{"type", "Punctuation"}}}}});
  EXPECT_NE(refusal(j).find("pre_tokenizer.pretokenizers[0]"), std::string::npos) << refusal(j);
  j = abc_bpe(nullptr);
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(refusal(j).find("'WordPiece'"), std::string::npos);
  j = abc_bpe(nullptr);
  j["model"]["dropout"] = 0.1;
  EXPECT_NE(refusal(j).find("dropout"), std::string::npos);
  j = abc_bpe(nullptr);
  j["model"]["merges"] = {"a c"};
  EXPECT_NE(refusal(j).find("model.merges[0]"), std::string::npos);
  j = abc_bpe(nullptr);
  j["decoder"] = {{"type", "CTC"}};
  EXPECT_NE(refusal(j).find("decoder 'CTC'"), std::string::npos);
  j = abc_bpe(nullptr);
  j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<x>"}}}}}}, {"special_tokens", json::object()}};
  EXPECT_NE(refusal(j).find("'<x>' is not in special_tokens"), std::string::npos) << refusal(j);
  EXPECT_NE(refusal(json::array()).find("expected a JSON object"), std::string::npos);
  j = abc_bpe(nullptr);  // a sparse id would size the tables: refused, not allocated
  j["model"]["vocab"]["bb"] = 2000000000;
  EXPECT_NE(refusal(j).find("ids must be dense"), std::string::npos) << refusal(j);
  j = abc_bpe(nullptr);
  j["added_tokens"] = {{{"id", 1 << 30}, {"content", "<x>"}}};
  EXPECT_NE(refusal(j).find("added_tokens[0].id"), std::string::npos) << refusal(j);
  EXPECT_THROW(make(abc_bpe(nullptr))->encode("a\xFF"), Error);  // invalid UTF-8
  EXPECT_THROW(make(abc_bpe(nullptr))->decode({7}), Error);
}

TEST(HfTokenizer, TokenizerJsonComesBeforeTheOtherFormats) {
  TempDir dir;
  std::filesystem::copy_file(kFixtures + "/tokenizer_bpe/vocab.json", dir.file("vocab.json"));
  std::filesystem::copy_file(kFixtures + "/tokenizer_bpe/merges.txt", dir.file("merges.txt"));
  EXPECT_EQ(io::load_tokenizer(dir.path())->kind(), "gpt2-bpe");
  write_bytes(dir.file("tokenizer.json"), gpt2_json().dump());
  write_bytes(dir.file("tokenizer_config.json"), json({{"eos_token", {{"content", "<|endoftext|>"}}}}).dump());
  auto tok = io::load_tokenizer(dir.path());
  EXPECT_EQ(tok->kind(), "tokenizer.json");
  EXPECT_EQ(io::tokenizer_source(dir.path()), dir.file("tokenizer.json"));
  TempDir saved;
  tok->save(saved.path());
  EXPECT_EQ(read_bytes(saved.file("tokenizer.json")), read_bytes(dir.file("tokenizer.json")));
}

// Parity with transformers on directories trained on the GPU machine
// (tools/make_fixtures.py --hf-tokenizers-only): tokenizer.json-only GPT-2
// byte-level, Llama 3 regex + BOS template, Qwen2 NFC, Llama 2 byte fallback,
// T5 Unigram, and a tokenizer.model-only Llama 2 directory (converted as
// transformers 5 converts it: io/sentencepiece_model.h); every id of every
// case, with and without special tokens, and the decoded text.
TEST(HfTokenizer, FixturesGiveTransformersIds) {
  const json manifest = io::read_json_file(kFixtures + "/manifest.json");
  ASSERT_TRUE(manifest.contains("hf_tokenizers")) << "tests/fixtures/manifest.json lists no hf_tokenizers";
  json names = manifest["hf_tokenizers"];
  // The same tokenizer.model under Mistral's generic backend and under
  // LlamaTokenizer with BOS, EOS and legacy (make_fixtures.py --spm-classes-only).
  for (const auto& name : manifest.value("hf_spm_classes", json::array())) names.push_back(name);
  for (const auto& name : names) {
    const std::string dir = kFixtures + "/" + name.get<std::string>();
    SCOPED_TRACE(dir);
    auto tok = io::load_tokenizer(dir);
    const json cases = io::read_json_file(dir + "/cases.json");
    ASSERT_GE(cases["cases"].size(), 15u);
    for (const auto& c : cases["cases"]) {
      const std::string text = c["text"];
      EXPECT_EQ(tok->encode(text), c["ids"].get<Ids>()) << text;
      EXPECT_EQ(tok->encode_plain(text), c["no_special"].get<Ids>()) << text;
      EXPECT_EQ(tok->decode(c["ids"].get<Ids>()), c["decoded"].get<std::string>()) << text;
    }
  }
}

// The tokenizer.json recast builds from a tokenizer.model is the one
// transformers 5.17 builds: tests/fixtures/hf_llama2_bytefallback/tokenizer.json
// is LlamaTokenizer's backend for hf_llama2_spm_model/tokenizer.model, saved
// by make_fixtures.py. Vocabulary, merges (derived from the pieces), added
// tokens and every component agree.
TEST(HfTokenizer, TokenizerModelConvertsAsTransformersDoes) {
  const std::string model = kFixtures + "/hf_llama2_spm_model/tokenizer.model";
  const auto proto = io::parse_sentencepiece_model(io::read_sentencepiece_file(model), model);
  EXPECT_EQ(proto.model_type, 2);
  EXPECT_TRUE(proto.byte_fallback);
  EXPECT_EQ(proto.pieces.size(), 400u);
  const json ours = json::parse(io::sentencepiece_to_tokenizer_json(proto, io::SentencePieceConversion{}));
  const json theirs = io::read_json_file(kFixtures + "/hf_llama2_bytefallback/tokenizer.json");
  for (const char* key : {"added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model"}) {
    EXPECT_EQ(ours[key], theirs[key]) << key;
  }
  auto tok = io::load_tokenizer(kFixtures + "/hf_llama2_spm_model");
  EXPECT_EQ(tok->kind(), "tokenizer.model");
  // Llama's named tokens and a BOS when tokenizer_config.json asks for one.
  TempDir dir;
  std::filesystem::copy_file(model, dir.file("tokenizer.model"));
  write_bytes(dir.file("tokenizer_config.json"), R"({"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": true,
                                                     "add_eos_token": true, "eos_token": {"content": "</s>"}})");
  auto with = io::load_tokenizer(dir.path());
  const auto plain = with->encode_plain("Hello world");
  Ids want = {1};
  want.insert(want.end(), plain.begin(), plain.end());
  want.push_back(2);
  EXPECT_EQ(with->encode("Hello world"), want);
  EXPECT_EQ(with->eos_id(), 2);
  // Saved as the converted tokenizer.json, which loads back the same.
  TempDir saved;
  with->save(saved.path());
  EXPECT_EQ(io::load_tokenizer(saved.path())->encode("Hello  world"), with->encode("Hello  world"));
}

// A malformed tokenizer.model is refused with the file and the field.
TEST(HfTokenizer, MalformedTokenizerModelIsNamed) {
  const std::string model = kFixtures + "/hf_llama2_spm_model/tokenizer.model";
  const std::string bytes = io::read_sentencepiece_file(model);
  for (const std::string& bad : {bytes.substr(0, bytes.size() / 2), std::string("\x0a\xff\xff\xff\xff\x0f", 6),
                                 std::string(), std::string("\x0b", 1)}) {
    try {
      io::parse_sentencepiece_model(bad, "m/tokenizer.model");
      ADD_FAILURE() << "parsed " << bad.size() << " bytes";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("m/tokenizer.model: not a SentencePiece model (", 0), 0u) << e.what();
    }
  }
}

// GPT-2's real 50,257-token vocabulary (scripts/fetch-data.sh gpt2-vocab, which
// `make test` runs) against transformers' GPT2Tokenizer ids
// (tests/fixtures/gpt2_real, made by make_fixtures.py --gpt2-real-only).
TEST(Gpt2Bpe, TheRealVocabularyGivesTransformersIds) {
  const std::string vocab = std::string(RECAST_SOURCE_DIR) + "/data/gpt2-vocab";
  ASSERT_TRUE(std::filesystem::exists(vocab + "/vocab.json"))
      << vocab << " is missing: run scripts/fetch-data.sh gpt2-vocab (make test does)";
  auto tok = io::load_tokenizer(vocab);
  const json cases = io::read_json_file(kFixtures + "/gpt2_real/cases.json");
  ASSERT_EQ(cases["vocab_size"].get<int64_t>(), 50257);
  ASSERT_GT(cases["cases"].size(), 20u);
  for (const auto& c : cases["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok->encode(text), c["ids"].get<Ids>()) << text;
    EXPECT_EQ(tok->decode(c["ids"].get<Ids>()), c["decoded"].get<std::string>()) << text;
  }
}

}  // namespace
}  // namespace recast::testing

