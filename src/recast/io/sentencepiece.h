#pragma once

// SentencePiece models (T5's spiece.model, Llama / Mistral's tokenizer.model)
// through the sentencepiece library (Debian's libsentencepiece-dev), with the
// conventions transformers' tokenizers add around it. Debian's
// libsentencepiece carries its own copy of protobuf-lite with exported
// symbols, and Debian's LibTorch loads libprotobuf.so.32: in one process the
// two interpose and the process crashes while it loads (seen: a segfault in
// protobuf's static initialisation). So the library runs in a `recast
// __sentencepiece` process (the front executable, which does not load
// LibTorch; io/sentencepiece_server.h), started once per tokenizer and spoken
// to over a pipe; everything else (special tokens, sentinels, BOS / EOS) is
// here.
//   - T5: 100 <extra_id_N> sentinels above the model's pieces (id =
//     vocab_size - 1 - N), </s> appended to every encoding;
//   - tokenizer.model: <s> prepended (add_bos_token), nothing appended;
//   - special tokens (the model's control pieces <pad>, </s>, <s>, its <unk>,
//     and the sentinels) are matched whole in the text and never split; the
//     text between them is encoded by sentencepiece piece by piece.

#include "recast/io/tokenizer.h"

#include <memory>
#include <string>
#include <vector>

namespace recast::io {

std::string train_sentencepiece(const std::vector<std::string>& sentences, int64_t vocab_size,
                                const std::string& model_type);

// A model file's bytes (refused above 1 GiB; errors name the file).
std::string read_sentencepiece_file(const std::string& path);

struct SentencePieceConventions {
  int64_t extra_ids = 0;  // <extra_id_0> ... above the pieces
  bool add_bos = false, add_eos = false;
  std::string file = "spiece.model";          // the name it is saved under
  std::string tokenizer_class = "T5Tokenizer";  // written to tokenizer_config.json
};

class SentencePieceTokenizer : public Tokenizer {
 public:
  // Errors name the file and what sentencepiece said.
  static std::unique_ptr<SentencePieceTokenizer> from_file(const std::string& path,
                                                           SentencePieceConventions c);
  static std::unique_ptr<SentencePieceTokenizer> from_serialized(const std::string& proto,
                                                                 SentencePieceConventions c,
                                                                 const std::string& source);
  ~SentencePieceTokenizer() override;

  std::vector<int64_t> encode(std::string_view text) const override;
  std::vector<int64_t> encode_plain(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return pieces_ + conventions_.extra_ids; }
  std::string kind() const override { return "sentencepiece"; }
  bool is_special(int64_t id) const override;
  int64_t eos_id() const override { return eos_; }
  // <extra_id_N>'s id (vocab_size - 1 - N), or -1 when there are fewer sentinels.
  int64_t sentinel_id(int64_t n) const;
  // The model file (as loaded, byte for byte) + tokenizer_config.json.
  void save(const std::string& dir) const override;

 private:
  friend std::string train_sentencepiece(const std::vector<std::string>&, int64_t, const std::string&);
  SentencePieceTokenizer();
  std::string piece_text(int64_t id) const;  // a special token's text

  class Server;
  std::unique_ptr<Server> server_;
  std::string proto_;
  SentencePieceConventions conventions_;
  int64_t pieces_ = 0, eos_ = -1, bos_ = -1, pad_ = -1, unk_ = -1;
  std::vector<std::string> piece_;    // id -> piece
  std::vector<uint8_t> flags_;        // id -> 1 control, 2 unknown
  std::vector<std::pair<std::string, int64_t>> specials_;  // text -> id, longest first
};

// Trains a model with the sentencepiece library on `sentences` (one document
// or line each) and returns the serialized model: T5's layout (pad 0, eos 1,
// unk 2, no bos), `model_type` "unigram" or "bpe", byte fallback off,
// character coverage 1 (every character seen is kept), deterministic (one
// thread, no sampling of the input). Lines must not contain '\n'.
std::string train_sentencepiece(const std::vector<std::string>& sentences, int64_t vocab_size,
                                const std::string& model_type);

}  // namespace recast::io
