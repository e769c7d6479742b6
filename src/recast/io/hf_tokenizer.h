#pragma once

// Hugging Face tokenizers' tokenizer.json, read strictly: each component the
// file names is built as the tokenizers library defines it, and a component
// (or a setting of one) recast does not implement is refused by name with
// its place in the file, never approximated.
//
//   normalizer      NFC, NFKC, NFD, NFKD (utf8proc), Prepend, Replace, Sequence
//   pre_tokenizer   ByteLevel, Split (the file's regex, through PCRE2),
//                   Metaspace, WhitespaceSplit, Sequence
//   model           BPE (byte_fallback, ignore_merges, continuing_subword_prefix,
//                   end_of_word_suffix, unk_token, fuse_unk), Unigram (Viterbi,
//                   byte_fallback)
//   added_tokens    special or not; lstrip, rstrip, single_word; normalized
//                   ones matched after the normalizer, the others before it
//   post_processor  TemplateProcessing (single), ByteLevel, BertProcessing,
//                   RobertaProcessing, Sequence: what encode() adds
//   decoder         ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,
//                   Sequence
//
// The order is the library's: added tokens split off the raw text, the
// normalizer on the rest, normalized added tokens split off, the
// pre-tokenizer, the model on each piece; the post-processor adds its
// tokens (encode(); encode_plain() leaves them out).

#include "recast/io/tokenizer.h"

#include <memory>
#include <string>
#include <vector>

namespace recast::io {

class HfTokenizer : public Tokenizer {
 public:
  // Errors name the file and the component's place in it
  // ("tokenizer.json: pre_tokenizer.pretokenizers[1]: ...").
  static std::unique_ptr<HfTokenizer> from_file(const std::string& path);
  static std::unique_ptr<HfTokenizer> from_json_text(const std::string& text, const std::string& source);
  ~HfTokenizer() override;

  std::vector<int64_t> encode(std::string_view text) const override;
  std::vector<int64_t> encode_plain(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override;
  std::string kind() const override { return kind_; }
  // What kind() reports ("tokenizer.model" for a converted SentencePiece model).
  void set_kind(std::string kind) { kind_ = std::move(kind); }
  bool is_special(int64_t id) const override;
  // tokenizer_config.json's eos_token when the directory has one, else the
  // first of </s>, <|endoftext|>, <|end_of_text|>, <|im_end|>, <eos> present.
  int64_t eos_id() const override { return eos_; }
  // tokenizer.json as loaded (byte for byte).
  void save(const std::string& dir) const override;
  // Sets the end-of-sequence token by its text (tokenizer_config.json).
  void set_eos(const std::string& token);
  // A token's text (its string in the vocabulary), for reports.
  std::string token_text(int64_t id) const;

  struct Impl;

 private:
  HfTokenizer();
  std::unique_ptr<Impl> impl_;
  std::string json_text_;
  std::string kind_ = "tokenizer.json";
  int64_t eos_ = -1;
};

}  // namespace recast::io
