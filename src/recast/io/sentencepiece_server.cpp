// The sentencepiece library, served over a pipe (see io/sentencepiece.h for
// why it runs in the `recast` front process, which does not load LibTorch).
// `recast __sentencepiece` reads requests on stdin and answers on stdout:
//   request  u8 op, u64 n, n bytes      response  u8 status (0 ok, 1 error), u64 n, n bytes
//   'L' a serialized model: load it   -> nothing
//   'P'                               -> i32 pieces, eos, bos, pad, unk; per piece u8 flags
//                                        (1 control, 2 unknown), u32 n, its text
//   'E' UTF-8 text                    -> i32 ids
//   'D' i32 ids                       -> text
//   'T' u32 vocab, u8 bpe, lines '\n' -> a serialized model trained on the lines

#include "recast/io/sentencepiece_server.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace recast::io {
namespace {

bool read_all(int fd, void* data, size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t got = ::read(fd, p, n);
    if (got <= 0) return false;
    p += got, n -= static_cast<size_t>(got);
  }
  return true;
}

bool write_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = ::write(fd, p, n);
    if (put <= 0) return false;
    p += put, n -= static_cast<size_t>(put);
  }
  return true;
}

bool reply(int fd, uint8_t status, const std::string& payload) {
  const uint64_t n = payload.size();
  return write_all(fd, &status, 1) && write_all(fd, &n, 8) && write_all(fd, payload.data(), n);
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

class LineSentences : public sentencepiece::SentenceIterator {
 public:
  explicit LineSentences(const std::string& text) : text_(text) { Next(); }
  bool done() const override { return done_; }
  void Next() override {
    if (pos_ >= text_.size()) {
      done_ = true;
      return;
    }
    const size_t end = std::min(text_.find('\n', pos_), text_.size());
    line_ = text_.substr(pos_, end - pos_);
    pos_ = end + 1;
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::string& text_;
  size_t pos_ = 0;
  bool done_ = false;
  std::string line_;
};

std::string train(const std::string& request, std::string* error) {
  uint32_t vocab = 0;
  uint8_t bpe = 0;
  if (request.size() < 5) {
    *error = "malformed training request";
    return {};
  }
  std::memcpy(&vocab, request.data(), 4);
  std::memcpy(&bpe, request.data() + 4, 1);
  const std::string lines = request.substr(5);
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", bpe ? "bpe" : "unigram"},
      {"vocab_size", std::to_string(vocab)},
      {"pad_id", "0"}, {"eos_id", "1"}, {"unk_id", "2"}, {"bos_id", "-1"},
      {"character_coverage", "1.0"},
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"max_sentence_length", "1000000"}};
  LineSentences it(lines);
  std::string proto;
  // The trainer logs every step to stderr: silenced while it runs.
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int null = ::open("/dev/null", O_WRONLY);
  if (null >= 0) ::dup2(null, 2), ::close(null);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &proto);
  std::fflush(stderr);
  if (saved >= 0) ::dup2(saved, 2), ::close(saved);
  if (!status.ok()) *error = status.ToString();
  return proto;
}

}  // namespace

int sentencepiece_server() {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  for (;;) {
    uint8_t op = 0;
    uint64_t n = 0;
    if (!read_all(0, &op, 1) || !read_all(0, &n, 8)) return 0;  // the client is gone
    if (n > (uint64_t{1} << 34)) return 1;
    std::string payload(n, '\0');
    if (!read_all(0, payload.data(), n)) return 1;
    std::string out, error;
    if (op == 'L') {
      sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
      const auto status = sp->LoadFromSerializedProto(payload);
      if (!status.ok()) error = status.ToString();
    } else if (op == 'P') {
      const int pieces = sp->GetPieceSize();
      for (int v : {pieces, sp->eos_id(), sp->bos_id(), sp->pad_id(), sp->unk_id()}) put<int32_t>(out, v);
      for (int id = 0; id < pieces; ++id) {
        const uint8_t flags = (sp->IsControl(id) ? 1 : 0) | (sp->IsUnknown(id) ? 2 : 0);
        const std::string& piece = sp->IdToPiece(id);
        put<uint8_t>(out, flags);
        put<uint32_t>(out, static_cast<uint32_t>(piece.size()));
        out += piece;
      }
    } else if (op == 'E') {
      std::vector<int> ids;
      const auto status = sp->Encode(payload, &ids);
      if (!status.ok()) error = status.ToString();
      for (int id : ids) put<int32_t>(out, id);
    } else if (op == 'D') {
      std::vector<int> ids(payload.size() / 4);
      if (!ids.empty()) std::memcpy(ids.data(), payload.data(), ids.size() * 4);
      const auto status = sp->Decode(ids, &out);
      if (!status.ok()) error = status.ToString();
    } else if (op == 'T') {
      out = train(payload, &error);
    } else {
      error = "unknown request";
    }
    if (!reply(1, error.empty() ? 0 : 1, error.empty() ? out : error)) return 1;
  }
}

}  // namespace recast::io
