#include "recast/io/sentencepiece.h"

#include "recast/core/error.h"
#include "recast/io/file.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <mutex>

namespace recast::io {
namespace {

}  // namespace

// The whole file (a SentencePiece model: a few MB at most; refused above 1 GiB).
std::string read_sentencepiece_file(const std::string& path) {
  if (!is_regular_file(path)) {
    const std::string why = path_problem(path);
    throw Error(msg(path, ": ", why.empty() ? "is a directory, not a SentencePiece model" : why));
  }
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  const auto size = static_cast<int64_t>(in.tellg());
  RECAST_CHECK(in && size >= 0 && size <= (int64_t{1} << 30), path, ": ", size,
               " bytes; a SentencePiece model is expected to be well under 1 GiB");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.seekg(0);
  in.read(bytes.data(), size);
  RECAST_CHECK(in.gcount() == size, path, ": short read");
  return bytes;
}

namespace {

// Throws unless `text` is well-formed UTF-8 (no overlong forms, surrogates or
// code points above U+10FFFF), naming the byte where it breaks.
void check_utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok && len > 1) {
      uint32_t cp = c & (0x7F >> len);
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
      const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= least[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!ok) throw Error(msg("text is not valid UTF-8 (at byte ", i, ")"));
    i += len;
  }
}

}  // namespace

// A `recast __sentencepiece` process and the pipes to it.
class SentencePieceTokenizer::Server {
 public:
  Server() {
    const std::string exe = front_executable();
    int to[2], from[2];
    RECAST_CHECK(::pipe(to) == 0 && ::pipe(from) == 0, "sentencepiece: pipe: ", std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to[0], 0);
    posix_spawn_file_actions_adddup2(&actions, from[1], 1);
    for (int fd : {to[0], to[1], from[0], from[1]}) posix_spawn_file_actions_addclose(&actions, fd);
    std::string arg0 = exe, arg1 = "__sentencepiece";
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    const int rc = ::posix_spawn(&pid_, exe.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(to[0]);
    ::close(from[1]);
    out_ = to[1], in_ = from[0];
    ::fcntl(out_, F_SETFD, FD_CLOEXEC);
    ::fcntl(in_, F_SETFD, FD_CLOEXEC);
    if (rc != 0) {
      close();
      throw Error(msg("sentencepiece: cannot start ", exe, " (", std::strerror(rc), ")"));
    }
    // A server that dies must give an error here, not SIGPIPE.
    ::signal(SIGPIPE, SIG_IGN);
  }
  ~Server() { close(); }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // One request, one answer; throws with the library's message on an error.
  std::string call(char op, const std::string& payload) {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint8_t code = static_cast<uint8_t>(op);
    const uint64_t n = payload.size();
    uint8_t status = 1;
    uint64_t m = 0;
    if (!write_all(&code, 1) || !write_all(&n, 8) || !write_all(payload.data(), n) ||
        !read_all(&status, 1) || !read_all(&m, 8) || m > (uint64_t{1} << 34)) {
      throw Error("sentencepiece: the helper process (recast __sentencepiece) stopped answering");
    }
    std::string answer(m, '\0');
    if (!read_all(answer.data(), m)) {
      throw Error("sentencepiece: the helper process (recast __sentencepiece) stopped answering");
    }
    if (status != 0) throw Error(msg("sentencepiece: ", answer));
    return answer;
  }

 private:
  // $RECAST_FRONT, else `recast` beside this executable or one directory up
  // (the tests' binaries sit in build/tests/).
  static std::string front_executable() {
    if (const char* env = std::getenv("RECAST_FRONT")) return env;
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    std::vector<std::filesystem::path> tried;
    for (const auto& dir : {self.parent_path(), self.parent_path().parent_path()}) {
      const auto candidate = dir / "recast";
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
      tried.push_back(candidate);
    }
    throw Error(msg("sentencepiece: the recast executable, which runs the sentencepiece library, "
                    "is not beside ", self.string(), " (looked for ", tried[0].string(), " and ",
                    tried[1].string(), "; or set RECAST_FRONT)"));
  }
  bool write_all(const void* data, size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t put = ::write(out_, p, n);
      if (put < 0 && errno == EINTR) continue;
      if (put <= 0) return false;
      p += put, n -= static_cast<size_t>(put);
    }
    return true;
  }
  bool read_all(void* data, size_t n) {
    auto* p = static_cast<char*>(data);
    while (n > 0) {
      const ssize_t got = ::read(in_, p, n);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      p += got, n -= static_cast<size_t>(got);
    }
    return true;
  }
  void close() {
    if (out_ >= 0) ::close(out_);  // the server sees EOF and exits
    if (in_ >= 0) ::close(in_);
    out_ = in_ = -1;
    if (pid_ > 0) {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
    }
  }
  pid_t pid_ = -1;
  int out_ = -1, in_ = -1;
  std::mutex mutex_;
};

SentencePieceTokenizer::SentencePieceTokenizer() : server_(std::make_unique<Server>()) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_file(
    const std::string& path, SentencePieceConventions c) {
  return from_serialized(read_sentencepiece_file(path), std::move(c), path);
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_serialized(
    const std::string& proto, SentencePieceConventions c, const std::string& source) {
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  try {
    t->server_->call('L', proto);
  } catch (const Error& e) {
    throw Error(msg(source, ": not a SentencePiece model (", e.what(), ")"));
  }
  // Every piece and its kind, once.
  const std::string info = t->server_->call('P', "");
  size_t at = 0;
  auto take = [&](void* out, size_t n) {
    RECAST_CHECK(at + n <= info.size(), "sentencepiece: a short answer from the helper process");
    std::memcpy(out, info.data() + at, n);
    at += n;
  };
  int32_t head[5];
  take(head, sizeof head);
  t->pieces_ = head[0], t->eos_ = head[1], t->bos_ = head[2], t->pad_ = head[3], t->unk_ = head[4];
  for (int64_t id = 0; id < t->pieces_; ++id) {
    uint8_t flags = 0;
    uint32_t n = 0;
    take(&flags, 1);
    take(&n, 4);
    std::string piece(n, '\0');
    take(piece.data(), n);
    t->flags_.push_back(flags);
    t->piece_.push_back(std::move(piece));
  }
  RECAST_CHECK(c.extra_ids >= 0 && c.extra_ids <= 100000, source, ": extra_ids ", c.extra_ids,
               " is out of range [0, 100000]");
  t->proto_ = proto;
  t->conventions_ = std::move(c);
  RECAST_CHECK(!t->conventions_.add_eos || t->eos_ >= 0, source,
               ": the model has no </s> piece to append");
  RECAST_CHECK(!t->conventions_.add_bos || t->bos_ >= 0, source,
               ": the model has no <s> piece to prepend");
  // Special tokens matched whole: control pieces, <unk>, the sentinels.
  for (int64_t id = 0; id < t->pieces_; ++id) {
    if (t->flags_[static_cast<size_t>(id)] != 0) t->specials_.emplace_back(t->piece_[static_cast<size_t>(id)], id);
  }
  for (int64_t n = 0; n < t->conventions_.extra_ids; ++n) {
    t->specials_.emplace_back(msg("<extra_id_", n, ">"), t->sentinel_id(n));
  }
  std::stable_sort(t->specials_.begin(), t->specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return t;
}

int64_t SentencePieceTokenizer::sentinel_id(int64_t n) const {
  if (n < 0 || n >= conventions_.extra_ids) return -1;
  return vocab_size() - 1 - n;
}

bool SentencePieceTokenizer::is_special(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  return id >= pieces_ || flags_[static_cast<size_t>(id)] != 0;
}

std::string SentencePieceTokenizer::piece_text(int64_t id) const {
  if (id >= pieces_) return msg("<extra_id_", vocab_size() - 1 - id, ">");
  return piece_[static_cast<size_t>(id)];
}

std::vector<int64_t> SentencePieceTokenizer::encode_plain(std::string_view text) const {
  check_utf8(text);
  std::vector<int64_t> out;
  auto piece = [&](std::string_view segment) {
    if (segment.empty()) return;
    const std::string ids = server_->call('E', std::string(segment));
    for (size_t i = 0; i + 4 <= ids.size(); i += 4) {
      int32_t id = 0;
      std::memcpy(&id, ids.data() + i, 4);
      out.push_back(id);
    }
  };
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '<') continue;  // every special token starts with '<'
    for (const auto& [s, id] : specials_) {
      if (text.compare(i, s.size(), s) == 0) {
        piece(text.substr(start, i - start));
        out.push_back(id);
        i += s.size() - 1;
        start = i + 1;
        break;
      }
    }
  }
  piece(text.substr(start));
  return out;
}

std::vector<int64_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  if (conventions_.add_bos) out.push_back(bos_);
  const std::vector<int64_t> body = encode_plain(text);
  out.insert(out.end(), body.begin(), body.end());
  if (conventions_.add_eos) out.push_back(eos_);
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  std::string run;  // int32 ids for the library
  auto flush = [&] {
    if (run.empty()) return;
    out += server_->call('D', run);
    run.clear();
  };
  for (const int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw Error(msg("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
    }
    if (is_special(id)) {
      flush();
      out += piece_text(id);
    } else {
      const auto id32 = static_cast<int32_t>(id);
      run.append(reinterpret_cast<const char*>(&id32), 4);
    }
  }
  flush();
  return out;
}

void SentencePieceTokenizer::save(const std::string& dir) const {
  std::filesystem::create_directories(dir);
  const std::filesystem::path d(dir);
  write_file_atomic((d / conventions_.file).string(), proto_);
  nlohmann::json config = {{"tokenizer_class", conventions_.tokenizer_class},
                           {"add_bos_token", conventions_.add_bos},
                           {"add_eos_token", conventions_.add_eos}};
  if (conventions_.extra_ids > 0) config["extra_ids"] = conventions_.extra_ids;
  if (eos_ >= 0) config["eos_token"] = piece_text(eos_);
  if (pad_ >= 0) config["pad_token"] = piece_text(pad_);
  if (unk_ >= 0) config["unk_token"] = piece_text(unk_);
  write_file_atomic((d / "tokenizer_config.json").string(), config.dump(2) + "\n");
}

std::string train_sentencepiece(const std::vector<std::string>& sentences, int64_t vocab_size,
                                const std::string& model_type) {
  RECAST_CHECK(model_type == "unigram" || model_type == "bpe",
               "--model-type: expected unigram or bpe, found ", quote(model_type));
  RECAST_CHECK(!sentences.empty(), "tokenizer training: no text");
  RECAST_CHECK(vocab_size >= 1 && vocab_size < (int64_t{1} << 31), "--vocab-size: ", vocab_size,
               " is out of range");
  std::string request(5, '\0');
  const auto vocab = static_cast<uint32_t>(vocab_size);
  std::memcpy(request.data(), &vocab, 4);
  request[4] = model_type == "bpe" ? 1 : 0;
  for (const auto& line : sentences) {
    RECAST_CHECK(line.find('\n') == std::string::npos, "tokenizer training: a sentence holds a newline");
    request += line;
    request += '\n';
  }
  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer());
  try {
    return t->server_->call('T', request);
  } catch (const Error& e) {
    throw Error(msg("tokenizer training (", e.what(), ")"));
  }
}

}  // namespace recast::io
