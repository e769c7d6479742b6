#pragma once

// Tokenizers: byte-level (256 byte ids + named specials) for the embedded demo,
// and GPT-2's byte-level BPE read from a transformers directory's vocab.json +
// merges.txt, with GPT-2's pre-tokenisation regex run by PCRE2 with Unicode
// properties. Checked token for token against Hugging Face's tokenizer.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace recast::io {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Throws recast::Error on text that is not valid UTF-8.
  // The ids with the special tokens the checkpoint's tokenizer adds by
  // default (T5: </s> appended; Llama: <s> prepended).
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // The text's own ids, without them (--no-special); special tokens written
  // in the text are still matched.
  virtual std::vector<int64_t> encode_plain(std::string_view text) const { return encode(text); }
  // Throws on ids outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::string kind() const = 0;
  // Whether `id` is a special token (<|endoftext|>, ...), not text.
  virtual bool is_special(int64_t id) const = 0;
  // <|endoftext|>'s id, or -1 when the vocabulary has none.
  virtual int64_t eos_id() const = 0;
  // Writes the files load_tokenizer(dir) reads back (atomically).
  virtual void save(const std::string& dir) const = 0;
};

// ids 0-255 are bytes; specials follow from 256 in the order given and are
// matched as whole strings in the text.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(std::vector<std::string> specials = {"<|endoftext|>"});
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return 256 + static_cast<int64_t>(specials_.size()); }
  std::string kind() const override { return "bytes"; }
  bool is_special(int64_t id) const override { return id >= 256 && id < vocab_size(); }
  int64_t eos_id() const override;
  // tokenizer_config.json: {"tokenizer_class": "recast-bytes", "special_tokens": [...]}
  void save(const std::string& dir) const override;

 private:
  std::vector<std::string> specials_;
};

class BpeTokenizer : public Tokenizer {
 public:
  // vocab.json: {"token": id, ...}; merges.txt: "#version" line optional, then
  // "left right" per line, highest priority first. Tokens written <|...|> are
  // special: matched whole in the text, never split (as GPT-2's
  // <|endoftext|>). Errors name the file and the line or entry.
  static std::unique_ptr<BpeTokenizer> from_files(const std::string& vocab_json,
                                                  const std::string& merges_txt);
  ~BpeTokenizer() override;
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string kind() const override { return "gpt2-bpe"; }
  bool is_special(int64_t id) const override;
  int64_t eos_id() const override;
  // vocab.json + merges.txt, as transformers writes them.
  void save(const std::string& dir) const override;

 private:
  BpeTokenizer();
  void encode_piece(std::string_view piece, std::vector<int64_t>& out) const;

  std::unordered_map<std::string, int64_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_rank_;  // "left right" -> rank
  std::vector<std::string> specials_;
  struct Regex;
  std::unique_ptr<Regex> regex_;
};

// The tokenizer of a checkpoint directory, in this order of precedence:
// tokenizer.json (Hugging Face tokenizers, io/hf_tokenizer.h), tokenizer.model
// or spiece.model (SentencePiece), vocab.json + merges.txt (GPT-2 BPE), a
// tokenizer_config.json naming "recast-bytes" (bytes); anything else is an
// error that says what was looked for.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);
// The file load_tokenizer(dir) reads (for -v reports).
std::string tokenizer_source(const std::string& dir);

}  // namespace recast::io
