#include "recast/io/hf_tokenizer.h"

#include "recast/core/error.h"
#include "recast/io/byte_level.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <nlohmann/json.hpp>
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <limits>
#include <filesystem>
#include <functional>
#include <map>
#include <queue>
#include <unordered_map>

namespace recast::io {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------- UTF-8

// The code point at s[i] and its length in bytes (s is valid UTF-8).
std::pair<int32_t, size_t> code_point_at(std::string_view s, size_t i) {
  int32_t cp = 0;
  const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                  static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  return {cp, static_cast<size_t>(n > 0 ? n : 1)};
}

void check_utf8_text(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    int32_t cp = 0;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                    static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n <= 0) throw Error(msg("text is not valid UTF-8 (at byte ", i, ")"));
    i += static_cast<size_t>(n);
  }
}

// Rust's String::from_utf8_lossy: each maximal invalid subsequence -> U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    int32_t cp = 0;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                    static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n > 0) {
      out.append(s.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
      continue;
    }
    // The longest prefix that could start a valid sequence, at least one byte.
    const auto c = static_cast<unsigned char>(s[i]);
    size_t want = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
    size_t k = 1;
    for (; k < want && i + k < s.size(); ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      unsigned char lo = 0x80, hi = 0xBF;
      if (k == 1 && c == 0xE0) lo = 0xA0;
      if (k == 1 && c == 0xED) hi = 0x9F;
      if (k == 1 && c == 0xF0) lo = 0x90;
      if (k == 1 && c == 0xF4) hi = 0x8F;
      if (d < lo || d > hi) break;
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

bool is_whitespace(int32_t cp) {
  const auto cat = utf8proc_category(cp);
  return cp == '\t' || cp == '\n' || cp == '\v' || cp == '\f' || cp == '\r' || cp == 0x85 ||
         cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(int32_t cp) {
  const auto cat = utf8proc_category(cp);
  return cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// ---------------------------------------------------------------- regex

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t flags = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), flags, &error, &offset,
                          nullptr);
    if (!code_) {
      PCRE2_UCHAR text[256];
      pcre2_get_error_message(error, text, sizeof text);
      throw Error(msg(where, ": the regex ", quote(pattern), " does not compile at offset ", offset, ": ",
                      reinterpret_cast<const char*>(text)));
    }
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }
  // Non-empty, non-overlapping matches [start, end), left to right.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> m(
        pcre2_match_data_create_from_pattern(code_, nullptr), pcre2_match_data_free);
    size_t start = 0;
    while (start < s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, 0, m.get(),
                                 nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw Error(msg("regex match failed (PCRE2 error ", rc, ")"));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.get());
      if (ov[1] == ov[0]) {  // an empty match: no piece, move one character on
        start = ov[0] + code_point_at(s, ov[0]).second;
        continue;
      }
      out.emplace_back(ov[0], ov[1]);
      start = ov[1];
    }
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// ---------------------------------------------------------------- reading the file

struct Reader {
  std::string file;
  std::string where(const std::string& path) const { return file + ": " + path; }
  const json& at(const json& j, const std::string& key, const std::string& path) const {
    auto it = j.find(key);
    if (it == j.end()) throw Error(msg(where(path), ": missing '", key, "'"));
    return *it;
  }
  std::string str(const json& j, const std::string& key, const std::string& path) const {
    const json& v = at(j, key, path);
    if (!v.is_string()) throw Error(msg(where(path + "." + key), ": expected a string, found ", v.dump()));
    return v.get<std::string>();
  }
  bool flag(const json& j, const std::string& key, bool fallback, const std::string& path) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) throw Error(msg(where(path + "." + key), ": expected true or false, found ", it->dump()));
    return it->get<bool>();
  }
  std::string type(const json& j, const std::string& path) const {
    if (!j.is_object()) throw Error(msg(where(path), ": expected an object, found ", j.dump().substr(0, 80)));
    return str(j, "type", path);
  }
  [[noreturn]] void unsupported(const std::string& path, const std::string& kind, const std::string& name,
                                const char* supported) const {
    throw Error(msg(where(path), ": ", kind, " ", quote(name), " is not supported (supported: ", supported, ")"));
  }
  // {"String": s} or {"Regex": r}
  std::shared_ptr<Regex> pattern(const json& j, const std::string& path) const {
    const json& p = at(j, "pattern", path);
    if (p.is_object() && p.contains("String") && p["String"].is_string()) {
      return std::make_shared<Regex>(p["String"].get<std::string>(), true, where(path + ".pattern"));
    }
    if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
      return std::make_shared<Regex>(p["Regex"].get<std::string>(), false, where(path + ".pattern"));
    }
    throw Error(msg(where(path + ".pattern"), ": expected {\"String\": ...} or {\"Regex\": ...}, found ", p.dump()));
  }
  std::string single_char(const json& j, const std::string& key, const std::string& path) const {
    const std::string s = str(j, key, path);
    if (s.empty() || code_point_at(s, 0).second != s.size()) {
      throw Error(msg(where(path + "." + key), ": expected one character, found ", quote(s)));
    }
    return s;
  }
};

// A piece of the input on its way to the model; `first`: it starts the text
// (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  bool first = false;
};

using Normalizer = std::function<std::string(std::string)>;
using PreTokenizer = std::function<void(std::vector<Piece>&)>;
using Decoder = std::function<void(std::vector<std::string>&)>;
using PostProcessor = std::function<void(std::vector<int64_t>&)>;

// A Sequence component's parts: each entry of j[key] built by `make` (null
// entries, which build nothing, dropped).
template <typename F>
std::vector<F> sequence_of(const Reader& r, const json& j, const char* key, const std::string& path,
                           F (*make)(const Reader&, const json&, const std::string&)) {
  const json& list = r.at(j, key, path);
  if (!list.is_array()) throw Error(msg(r.where(path + "." + key), ": expected a list"));
  std::vector<F> parts;
  for (size_t i = 0; i < list.size(); ++i) {
    if (F part = make(r, list[i], msg(path, ".", key, "[", i, "]"))) parts.push_back(part);
  }
  return parts;
}

std::string replace_all(const std::string& s, const Regex& re, const std::string& content) {
  std::string out;
  size_t last = 0;
  for (auto [a, b] : re.find_all(s)) {
    out.append(s, last, a - last);
    out += content;
    last = b;
  }
  out.append(s, last, std::string::npos);
  return out;
}

std::string unicode_normalize(const std::string& s, utf8proc_option_t options) {
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                              static_cast<utf8proc_ssize_t>(s.size()), &out,
                              static_cast<utf8proc_option_t>(options | UTF8PROC_STABLE));
  if (n < 0) throw Error(msg("unicode normalisation failed: ", utf8proc_errmsg(n)));
  std::string r(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return r;
}

Normalizer make_normalizer(const Reader& r, const json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = r.type(j, path);
  const char* supported = "NFC, NFKC, NFD, NFKD, Prepend, Replace, Sequence";
  if (t == "NFC") return [](std::string s) { return unicode_normalize(s, UTF8PROC_COMPOSE); };
  if (t == "NFKC") return [](std::string s) { return unicode_normalize(s, static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_COMPAT)); };
  if (t == "NFD") return [](std::string s) { return unicode_normalize(s, UTF8PROC_DECOMPOSE); };
  if (t == "NFKD") return [](std::string s) { return unicode_normalize(s, static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT)); };
  if (t == "Prepend") {
    const std::string p = r.str(j, "prepend", path);
    return [p](std::string s) { return s.empty() ? s : p + s; };
  }
  if (t == "Replace") {
    auto re = r.pattern(j, path);
    const std::string content = r.str(j, "content", path);
    return [re, content](std::string s) { return replace_all(s, *re, content); };
  }
  if (t == "Sequence") {
    const std::vector<Normalizer> parts = sequence_of(r, j, "normalizers", path, &make_normalizer);
    return [parts](std::string s) {
      for (const auto& n : parts) s = n(std::move(s));
      return s;
    };
  }
  r.unsupported(path, "normalizer", t, supported);
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// The tokenizers library's NormalizedString::split: segments of `s` by the
// matches of `re`, combined as `behavior` says; empty pieces dropped.
std::vector<std::string> split_by(const std::string& s, const std::vector<std::pair<size_t, size_t>>& matches,
                                  Behavior behavior, bool invert) {
  struct Seg {
    size_t a, b;
    bool match;
  };
  std::vector<Seg> segs;
  size_t last = 0;
  for (auto [a, b] : matches) {
    if (a > last) segs.push_back({last, a, false});
    segs.push_back({a, b, true});
    last = b;
  }
  if (last < s.size()) segs.push_back({last, s.size(), false});
  if (invert) for (auto& g : segs) g.match = !g.match;
  std::vector<Seg> out;
  bool previous = false;
  switch (behavior) {
    case Behavior::Removed:
      for (const auto& g : segs) if (!g.match) out.push_back(g);
      break;
    case Behavior::Isolated:
      out = segs;
      break;
    case Behavior::MergedWithPrevious:
      for (const auto& g : segs) {
        if (g.match && !previous && !out.empty()) out.back().b = g.b; else out.push_back(g);
        previous = g.match;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous && !out.empty()) out.back().a = it->a; else out.push_back(*it);
        previous = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case Behavior::Contiguous:
      for (const auto& g : segs) {
        if (g.match == previous && !out.empty()) out.back().b = g.b; else out.push_back(g);
        previous = g.match;
      }
      break;
  }
  std::vector<std::string> pieces;
  for (const auto& g : out) if (g.b > g.a) pieces.push_back(s.substr(g.a, g.b - g.a));
  return pieces;
}

// Each piece through f(piece) -> its new pieces; only the first of a first piece stays first.
void split_pieces(std::vector<Piece>& pieces, const std::function<std::vector<std::string>(const Piece&)>& f) {
  std::vector<Piece> out;
  for (const Piece& p : pieces) {
    bool first = p.first;
    for (auto& s : f(p)) {
      out.push_back({std::move(s), first});
      first = false;
    }
  }
  pieces = std::move(out);
}

Behavior behavior_of(const Reader& r, const json& j, const std::string& path) {
  const std::string b = r.str(j, "behavior", path);
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  r.unsupported(path + ".behavior", "split behavior", b, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

// GPT-2's pre-tokenisation regex (ByteLevel's use_regex).
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class Prepend { Always, First, Never };

Prepend prepend_scheme(const Reader& r, const json& j, const std::string& path) {
  auto it = j.find("prepend_scheme");
  if (it != j.end() && !it->is_null()) {
    const std::string s = r.str(j, "prepend_scheme", path);
    if (s == "always") return Prepend::Always;
    if (s == "first") return Prepend::First;
    if (s == "never") return Prepend::Never;
    r.unsupported(path + ".prepend_scheme", "prepend_scheme", s, "always, first, never");
  }
  return r.flag(j, "add_prefix_space", true, path) ? Prepend::Always : Prepend::Never;  // older files
}

PreTokenizer make_pre_tokenizer(const Reader& r, const json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = r.type(j, path);
  if (t == "ByteLevel") {
    const bool prefix = r.flag(j, "add_prefix_space", true, path), regex = r.flag(j, "use_regex", true, path);
    auto re = std::make_shared<Regex>(kByteLevelPattern, false, r.where(path));
    return [prefix, regex, re](std::vector<Piece>& pieces) {
      const ByteLevelAlphabet& alpha = byte_level_alphabet();
      split_pieces(pieces, [&](const Piece& p) {
        std::string s = p.text;
        if (prefix && (s.empty() || s[0] != ' ')) s = " " + s;
        std::vector<std::string> parts = regex ? split_by(s, re->find_all(s), Behavior::Isolated, false)
                                               : std::vector<std::string>{s};
        for (auto& part : parts) {
          std::string mapped;
          for (unsigned char c : part) mapped += alpha.symbol[c];
          part = std::move(mapped);
        }
        return parts;
      });
    };
  }
  if (t == "Split") {
    auto re = r.pattern(j, path);
    const Behavior b = behavior_of(r, j, path);
    const bool invert = r.flag(j, "invert", false, path);
    return [re, b, invert](std::vector<Piece>& pieces) {
      split_pieces(pieces, [&](const Piece& p) { return split_by(p.text, re->find_all(p.text), b, invert); });
    };
  }
  if (t == "Metaspace") {
    const std::string rep = r.single_char(j, "replacement", path);
    const Prepend scheme = prepend_scheme(r, j, path);
    const bool split = r.flag(j, "split", true, path);
    auto space = std::make_shared<Regex>(" ", true, r.where(path));
    auto mark = std::make_shared<Regex>(rep, true, r.where(path));
    return [rep, scheme, split, space, mark](std::vector<Piece>& pieces) {
      split_pieces(pieces, [&](const Piece& p) {
        std::string s = replace_all(p.text, *space, rep);
        const bool starts = s.compare(0, rep.size(), rep) == 0;
        if (!starts && (scheme == Prepend::Always || (scheme == Prepend::First && p.first))) s = rep + s;
        return split ? split_by(s, mark->find_all(s), Behavior::MergedWithNext, false) : std::vector<std::string>{s};
      });
    };
  }
  if (t == "WhitespaceSplit") {
    auto ws = std::make_shared<Regex>(R"(\s+)", false, r.where(path));
    return [ws](std::vector<Piece>& pieces) {
      split_pieces(pieces, [&](const Piece& p) { return split_by(p.text, ws->find_all(p.text), Behavior::Removed, false); });
    };
  }
  if (t == "Sequence") {
    const std::vector<PreTokenizer> parts = sequence_of(r, j, "pretokenizers", path, &make_pre_tokenizer);
    return [parts](std::vector<Piece>& pieces) {
      for (const auto& p : parts) p(pieces);
    };
  }
  r.unsupported(path, "pre_tokenizer", t, "ByteLevel, Split, Metaspace, WhitespaceSplit, Sequence");
}

Decoder make_decoder(const Reader& r, const json& j, const std::string& path) {
  if (j.is_null()) return nullptr;
  const std::string t = r.type(j, path);
  if (t == "ByteLevel") {
    return [](std::vector<std::string>& tokens) {
      const ByteLevelAlphabet& alpha = byte_level_alphabet();
      std::string bytes;
      for (const std::string& tok : tokens) {
        std::string mine;
        bool all = true;
        for (size_t i = 0; i < tok.size() && all;) {
          auto [cp, n] = code_point_at(tok, i);
          auto it = alpha.byte_of.find(static_cast<uint32_t>(cp));
          if (it == alpha.byte_of.end()) all = false; else mine += static_cast<char>(it->second);
          i += n;
        }
        bytes += all ? mine : tok;
      }
      tokens = {utf8_lossy(bytes)};
    };
  }
  if (t == "Metaspace") {
    const std::string rep = r.single_char(j, "replacement", path);
    const Prepend scheme = prepend_scheme(r, j, path);
    return [rep, scheme](std::vector<std::string>& tokens) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::string out;
        for (size_t k = 0; k < tokens[i].size();) {
          if (tokens[i].compare(k, rep.size(), rep) == 0) {
            if (!(i == 0 && scheme != Prepend::Never)) out += ' ';
            k += rep.size();
          } else {
            out += tokens[i][k++];
          }
        }
        tokens[i] = std::move(out);
      }
    };
  }
  if (t == "ByteFallback") {
    return [](std::vector<std::string>& tokens) {
      std::vector<std::string> out;
      std::string pending;
      size_t count = 0;
      auto flush = [&] {
        if (count == 0) return;
        std::string valid = utf8_lossy(pending);
        if (valid == pending) {
          out.push_back(pending);
        } else {
          for (size_t i = 0; i < count; ++i) out.emplace_back("\xEF\xBF\xBD");
        }
        pending.clear();
        count = 0;
      };
      for (const std::string& tok : tokens) {
        unsigned byte = 0;
        if (tok.size() == 6 && tok.compare(0, 3, "<0x") == 0 && tok[5] == '>' &&
            std::sscanf(tok.c_str() + 3, "%2X", &byte) == 1 && std::isxdigit(static_cast<unsigned char>(tok[3])) &&
            std::isxdigit(static_cast<unsigned char>(tok[4]))) {
          pending += static_cast<char>(byte);
          ++count;
        } else {
          flush();
          out.push_back(tok);
        }
      }
      flush();
      tokens = std::move(out);
    };
  }
  if (t == "Fuse") {
    return [](std::vector<std::string>& tokens) {
      std::string all;
      for (const auto& tok : tokens) all += tok;
      tokens = {all};
    };
  }
  if (t == "Strip") {
    const std::string content = r.single_char(j, "content", path);
    auto count = [&](const char* key) {
      const json& v = r.at(j, key, path);
      if (!v.is_number_unsigned()) throw Error(msg(r.where(path + "." + key), ": expected a count, found ", v.dump()));
      return v.get<size_t>();
    };
    const size_t start = count("start"), stop = count("stop");
    return [content, start, stop](std::vector<std::string>& tokens) {
      for (auto& tok : tokens) {
        size_t a = 0, b = tok.size();
        for (size_t i = 0; i < start && tok.compare(a, content.size(), content) == 0; ++i) a += content.size();
        for (size_t i = 0; i < stop && b >= a + content.size() &&
                           tok.compare(b - content.size(), content.size(), content) == 0; ++i) {
          b -= content.size();
        }
        tok = tok.substr(a, b - a);
      }
    };
  }
  if (t == "Replace") {
    auto re = r.pattern(j, path);
    const std::string content = r.str(j, "content", path);
    return [re, content](std::vector<std::string>& tokens) {
      for (auto& tok : tokens) tok = replace_all(tok, *re, content);
    };
  }
  if (t == "Sequence") {
    const std::vector<Decoder> parts = sequence_of(r, j, "decoders", path, &make_decoder);
    return [parts](std::vector<std::string>& tokens) {
      for (const auto& d : parts) d(tokens);
    };
  }
  r.unsupported(path, "decoder", t, "ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence");
}

// ---------------------------------------------------------------- models

struct Model {
  virtual ~Model() = default;
  virtual void tokenize(const std::string& piece, std::vector<int64_t>& out) const = 0;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> tokens;  // id -> text (the model's ids)
};

int64_t vocab_id(const Reader& r, const json& v, const std::string& path) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t{1} << 31)) {
    throw Error(msg(r.where(path), ": expected a token id in [0, 2^31), found ", v.dump()));
  }
  return v.get<int64_t>();
}

std::string byte_token(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// Byte fallback: `s` as its bytes' <0xNN> pieces, appended to `out` when
// the vocabulary has all of them (else nothing is appended).
bool append_bytes(const std::unordered_map<std::string, int64_t>& vocab, const std::string& s,
                  std::vector<int64_t>& out) {
  std::vector<int64_t> bytes;
  for (unsigned char c : s) {
    auto it = vocab.find(byte_token(c));
    if (it == vocab.end()) return false;
    bytes.push_back(it->second);
  }
  out.insert(out.end(), bytes.begin(), bytes.end());
  return true;
}

struct Bpe : Model {
  struct Rank {
    int64_t rank, merged;
  };
  std::map<std::pair<int64_t, int64_t>, Rank> merges;
  std::string prefix, suffix, unk;
  int64_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  void tokenize(const std::string& w, std::vector<int64_t>& out) const override {
    if (ignore_merges) {
      if (auto it = vocab.find(w); it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    std::vector<int64_t> word;
    int64_t pending_unk = -1;  // a fused run of unknown characters
    auto flush_unk = [&] {
      if (pending_unk >= 0) word.push_back(pending_unk);
      pending_unk = -1;
    };
    for (size_t i = 0; i < w.size();) {
      const size_t n = code_point_at(w, i).second;
      std::string s = w.substr(i, n);
      if (i > 0 && !prefix.empty()) s = prefix + s;
      if (i + n == w.size() && !suffix.empty()) s += suffix;
      i += n;
      if (auto it = vocab.find(s); it != vocab.end()) {
        flush_unk();
        word.push_back(it->second);
        continue;
      }
      // as the library does: bytes go in without ending a pending unknown run
      if (byte_fallback && append_bytes(vocab, s, word)) continue;
      if (unk_id >= 0) {
        if (pending_unk >= 0 && !fuse_unk) word.push_back(pending_unk);
        pending_unk = unk_id;
      }
    }
    flush_unk();
    merge(word);
    out.insert(out.end(), word.begin(), word.end());
  }

  // The library's Word::merge_all: lowest rank first, then leftmost.
  void merge(std::vector<int64_t>& ids) const {
    const size_t n = ids.size();
    if (n < 2) return;
    std::vector<int64_t> c = ids;
    std::vector<long> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) prev[i] = static_cast<long>(i) - 1, next[i] = i + 1 < n ? static_cast<long>(i + 1) : -1;
    struct Entry {
      int64_t rank;
      size_t pos;
      int64_t merged;
      bool operator<(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Entry> queue;
    for (size_t i = 0; i + 1 < n; ++i) {
      if (auto it = merges.find({c[i], c[i + 1]}); it != merges.end()) queue.push({it->second.rank, i, it->second.merged});
    }
    while (!queue.empty()) {
      const Entry top = queue.top();
      queue.pop();
      if (!alive[top.pos] || next[top.pos] < 0) continue;
      const auto right = static_cast<size_t>(next[top.pos]);
      auto it = merges.find({c[top.pos], c[right]});
      if (it == merges.end() || it->second.merged != top.merged) continue;
      c[top.pos] = top.merged;
      alive[right] = false;
      next[top.pos] = next[right];
      if (next[right] >= 0) prev[static_cast<size_t>(next[right])] = static_cast<long>(top.pos);
      if (prev[top.pos] >= 0) {
        const auto p = static_cast<size_t>(prev[top.pos]);
        if (auto m = merges.find({c[p], c[top.pos]}); m != merges.end()) queue.push({m->second.rank, p, m->second.merged});
      }
      if (next[top.pos] >= 0) {
        const auto q = static_cast<size_t>(next[top.pos]);
        if (auto m = merges.find({c[top.pos], c[q]}); m != merges.end()) queue.push({m->second.rank, top.pos, m->second.merged});
      }
    }
    ids.clear();
    for (size_t i = 0; i < n; ++i) if (alive[i]) ids.push_back(c[i]);
  }
};

struct Unigram : Model {
  std::vector<double> scores;
  int64_t unk_id = -1;
  bool byte_fallback = false;
  double min_score = 0;
  size_t longest = 0;  // bytes of the longest piece

  void tokenize(const std::string& s, std::vector<int64_t>& out) const override {
    if (s.empty()) return;
    const size_t len = s.size();
    const double unk_score = min_score - 10.0;
    struct Node {
      long start = -1;
      int64_t id = -1;
      double score = 0;
    };
    std::vector<Node> best(len + 1);
    best[0].start = 0;
    for (size_t at = 0; at < len;) {
      const size_t char_len = code_point_at(s, at).second;
      if (best[at].start < 0) {
        at += char_len;
        continue;
      }
      const double here = best[at].score;
      bool single = false;
      // Pieces starting here, shortest first (the library's trie order).
      for (size_t end = at + char_len; end <= len && end - at <= longest;) {
        if (auto it = vocab.find(s.substr(at, end - at)); it != vocab.end()) {
          const double score = (it->second == unk_id ? unk_score : scores[static_cast<size_t>(it->second)]) + here;
          if (best[end].start < 0 || score > best[end].score) best[end] = {static_cast<long>(at), it->second, score};
          single = single || end - at == char_len;
        }
        if (end == len) break;
        end += code_point_at(s, end).second;
      }
      if (!single) {
        const size_t end = at + char_len;
        const double score = unk_score + here;
        if (best[end].start < 0 || score > best[end].score) best[end] = {static_cast<long>(at), unk_id, score};
      }
      at += char_len;
    }
    // Back from the end; runs of unknown pieces fuse into one.
    std::vector<std::string> pieces;
    std::string unk_run;
    for (size_t end = len; end > 0;) {
      const Node& node = best[end];
      const auto start = static_cast<size_t>(node.start);
      const std::string piece = s.substr(start, end - start);
      if (unk_id >= 0 && node.id == unk_id) {
        unk_run = piece + unk_run;
      } else {
        if (!unk_run.empty()) pieces.push_back(unk_run), unk_run.clear();
        pieces.push_back(piece);
      }
      end = start;
    }
    if (!unk_run.empty()) pieces.push_back(unk_run);
    std::reverse(pieces.begin(), pieces.end());
    for (const std::string& piece : pieces) {
      if (auto it = vocab.find(piece); it != vocab.end()) {
        out.push_back(it->second);
        continue;
      }
      if (byte_fallback && append_bytes(vocab, piece, out)) continue;
      if (unk_id < 0) throw Error(msg("Unigram: ", quote(piece), " has no piece and the model has no unk_id"));
      out.push_back(unk_id);
    }
  }
};

std::unique_ptr<Model> make_model(const Reader& r, const json& j) {
  const std::string path = "model";
  const std::string t = j.is_object() && !j.contains("type") && j.contains("merges") ? "BPE" : r.type(j, path);
  if (t == "BPE") {
    auto m = std::make_unique<Bpe>();
    if (auto it = j.find("dropout"); it != j.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0)) {
      throw Error(msg(r.where("model.dropout"), ": BPE dropout ", it->dump(), " is not supported (only null)"));
    }
    const json& vocab = r.at(j, "vocab", path);
    if (!vocab.is_object()) throw Error(msg(r.where("model.vocab"), ": expected an object {token: id}"));
    for (const auto& [token, id] : vocab.items()) m->vocab[token] = vocab_id(r, id, "model.vocab." + token);
    auto opt_str = [&](const char* key) {
      auto it = j.find(key);
      return it == j.end() || it->is_null() ? std::string() : r.str(j, key, path);
    };
    m->prefix = opt_str("continuing_subword_prefix");
    m->suffix = opt_str("end_of_word_suffix");
    m->unk = opt_str("unk_token");
    if (!m->unk.empty()) {
      auto it = m->vocab.find(m->unk);
      if (it == m->vocab.end()) throw Error(msg(r.where("model.unk_token"), ": ", quote(m->unk), " is not in the vocabulary"));
      m->unk_id = it->second;
    }
    m->fuse_unk = r.flag(j, "fuse_unk", false, path);
    m->byte_fallback = r.flag(j, "byte_fallback", false, path);
    m->ignore_merges = r.flag(j, "ignore_merges", false, path);
    const json& merges = r.at(j, "merges", path);
    if (!merges.is_array()) throw Error(msg(r.where("model.merges"), ": expected a list"));
    for (size_t i = 0; i < merges.size(); ++i) {
      std::string a, b;
      const json& e = merges[i];
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          throw Error(msg(r.where(msg("model.merges[", i, "]")), ": expected \"left right\", found ", quote(s)));
        }
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>(), b = e[1].get<std::string>();
      } else {
        throw Error(msg(r.where(msg("model.merges[", i, "]")), ": expected \"left right\" or [left, right], found ", e.dump()));
      }
      // The library strips the prefix's length from b whatever b holds.
      const std::string merged = a + b.substr(std::min(m->prefix.size(), b.size()));
      auto ia = m->vocab.find(a), ib = m->vocab.find(b), im = m->vocab.find(merged);
      if (ia == m->vocab.end() || ib == m->vocab.end() || im == m->vocab.end()) {
        throw Error(msg(r.where(msg("model.merges[", i, "]")), ": ", quote(a), " + ", quote(b), " -> ", quote(merged),
                        ": a token not in the vocabulary"));
      }
      m->merges.emplace(std::make_pair(ia->second, ib->second), Bpe::Rank{static_cast<int64_t>(i), im->second});
    }
    return m;
  }
  if (t == "Unigram") {
    auto m = std::make_unique<Unigram>();
    const json& vocab = r.at(j, "vocab", path);
    if (!vocab.is_array()) throw Error(msg(r.where("model.vocab"), ": expected a list of [piece, score]"));
    m->min_score = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < vocab.size(); ++i) {
      const json& e = vocab[i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
        throw Error(msg(r.where(msg("model.vocab[", i, "]")), ": expected [piece, score], found ", e.dump().substr(0, 80)));
      }
      const std::string piece = e[0].get<std::string>();
      m->vocab.emplace(piece, static_cast<int64_t>(i));
      m->scores.push_back(e[1].get<double>());
      m->min_score = std::min(m->min_score, m->scores.back());
      m->longest = std::max(m->longest, piece.size());
    }
    if (auto it = j.find("unk_id"); it != j.end() && !it->is_null()) {
      m->unk_id = vocab_id(r, *it, "model.unk_id");
      if (m->unk_id >= static_cast<int64_t>(vocab.size())) {
        throw Error(msg(r.where("model.unk_id"), ": ", m->unk_id, " is outside the vocabulary of ", vocab.size()));
      }
    }
    m->byte_fallback = r.flag(j, "byte_fallback", false, path);
    return m;
  }
  r.unsupported(path, "model", t, "BPE, Unigram");
}

struct AddedToken {
  int64_t id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
};

}  // namespace

struct HfTokenizer::Impl {
  std::unique_ptr<Model> model;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  std::vector<PostProcessor> post;
  std::vector<AddedToken> added;
  std::unordered_map<int64_t, size_t> added_of_id;
  int64_t vocab = 0;

  // Splits `s` around the added tokens whose `normalized` flag is `normalized`
  // (leftmost-longest, as the library's Aho-Corasick; then single_word,
  // lstrip, rstrip). Calls text(piece, starts_at_0) and token(id).
  void split_added(const std::string& s, bool normalized, bool first,
                   const std::function<void(std::string, bool)>& text,
                   const std::function<void(int64_t)>& token) const {
    size_t pos = 0, emitted = 0;
    while (pos < s.size()) {
      size_t best_at = std::string::npos, best = 0;
      for (size_t i = 0; i < added.size(); ++i) {
        const AddedToken& a = added[i];
        if (a.normalized != normalized || a.content.empty()) continue;
        const size_t at = s.find(a.content, pos);
        if (at == std::string::npos) continue;
        if (at < best_at || (at == best_at && a.content.size() > added[best].content.size())) best_at = at, best = i;
      }
      if (best_at == std::string::npos) break;
      const AddedToken& a = added[best];
      size_t start = best_at, stop = best_at + a.content.size();
      pos = stop;  // the next search starts after the match (the library's iterator)
      if (a.single_word) {
        bool before = start > 0, after = stop < s.size();
        if (before) {
          size_t k = start - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          before = is_word_char(code_point_at(s, k).first);
        }
        if (after) after = is_word_char(code_point_at(s, stop).first);
        if (before || after) continue;
      }
      if (a.lstrip) {
        size_t k = start;
        while (k > 0) {
          size_t b = k - 1;
          while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
          if (!is_whitespace(code_point_at(s, b).first)) break;
          k = b;
        }
        start = std::max(k, emitted);
      }
      if (a.rstrip) {
        while (stop < s.size()) {
          auto [cp, n] = code_point_at(s, stop);
          if (!is_whitespace(cp)) break;
          stop += n;
        }
      }
      if (start > emitted) text(s.substr(emitted, start - emitted), first && emitted == 0);
      token(a.id);
      emitted = stop;
      pos = std::max(pos, stop);
    }
    if (emitted < s.size()) text(s.substr(emitted), first && emitted == 0);
  }

  std::vector<int64_t> encode(std::string_view text) const {
    check_utf8_text(text);
    std::vector<int64_t> out;
    const std::string input(text);
    split_added(input, false, true,
                [&](std::string raw, bool first) {
                  std::string norm = normalizer ? normalizer(std::move(raw)) : std::move(raw);
                  split_added(norm, true, first,
                              [&](std::string piece, bool piece_first) {
                                std::vector<Piece> pieces{{std::move(piece), piece_first}};
                                if (pre_tokenizer) pre_tokenizer(pieces);
                                for (const Piece& p : pieces) model->tokenize(p.text, out);
                              },
                              [&](int64_t id) { out.push_back(id); });
                },
                [&](int64_t id) { out.push_back(id); });
    return out;
  }
};

HfTokenizer::HfTokenizer() : impl_(std::make_unique<Impl>()) {}
HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::from_file(const std::string& path) {
  return from_json_text(read_file_capped(path, size_t{1} << 30), path);
}

std::unique_ptr<HfTokenizer> HfTokenizer::from_json_text(const std::string& text, const std::string& source) {
  Reader r{source};
  const json j = parse_json_strict(text, source);
  if (!j.is_object()) throw Error(msg(source, ": expected a JSON object"));
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());
  t->json_text_ = text;
  Impl& m = *t->impl_;
  if (auto it = j.find("truncation"); it != j.end() && !it->is_null()) {
    throw Error(msg(source, ": truncation is set; recast does not truncate in the tokenizer (remove it)"));
  }
  m.model = make_model(r, r.at(j, "model", "tokenizer"));
  m.normalizer = make_normalizer(r, j.value("normalizer", json()), "normalizer");
  m.pre_tokenizer = make_pre_tokenizer(r, j.value("pre_tokenizer", json()), "pre_tokenizer");
  m.decoder = make_decoder(r, j.value("decoder", json()), "decoder");
  for (const auto& [token, id] : m.model->vocab) m.vocab = std::max(m.vocab, id + 1);
  const size_t entries = m.model->vocab.size() + (j.contains("added_tokens") && j["added_tokens"].is_array()
                                                      ? j["added_tokens"].size() : 0);
  // Ids index tables: refuse a sparse id space (a hostile id of 2^31 would
  // otherwise allocate gigabytes).
  auto check_dense = [&](int64_t id, const std::string& what) {
    if (static_cast<uint64_t>(id) >= 2 * entries + 1024) {
      throw Error(msg(r.where(what), ": id ", id, " for ", entries, " tokens: ids must be dense (below ",
                      2 * entries + 1024, ")"));
    }
  };
  if (m.vocab > 0) check_dense(m.vocab - 1, "model.vocab");
  m.model->tokens.assign(static_cast<size_t>(m.vocab), std::string());
  for (const auto& [token, id] : m.model->vocab) m.model->tokens[static_cast<size_t>(id)] = token;
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) throw Error(msg(r.where("added_tokens"), ": expected a list"));
    for (size_t i = 0; i < it->size(); ++i) {
      const json& a = (*it)[i];
      const std::string path = msg("added_tokens[", i, "]");
      if (!a.is_object()) throw Error(msg(r.where(path), ": expected an object"));
      AddedToken tok{vocab_id(r, r.at(a, "id", path), path + ".id"), r.str(a, "content", path),
                     r.flag(a, "special", false, path),  r.flag(a, "lstrip", false, path),
                     r.flag(a, "rstrip", false, path),   r.flag(a, "single_word", false, path),
                     r.flag(a, "normalized", true, path)};
      check_dense(tok.id, path + ".id");
      m.added_of_id[tok.id] = m.added.size();
      m.added.push_back(tok);
      m.vocab = std::max(m.vocab, tok.id + 1);
    }
  }
  // post_processor
  std::function<void(const json&, const std::string&)> post = [&](const json& p, const std::string& path) {
    if (p.is_null()) return;
    const std::string type = r.type(p, path);
    if (type == "ByteLevel") return;  // offsets only
    if (type == "Sequence") {
      const json& list = r.at(p, "processors", path);
      if (!list.is_array()) throw Error(msg(r.where(path + ".processors"), ": expected a list"));
      for (size_t i = 0; i < list.size(); ++i) post(list[i], msg(path, ".processors[", i, "]"));
      return;
    }
    if (type == "TemplateProcessing") {
      const json& single = r.at(p, "single", path);
      const json& specials = r.at(p, "special_tokens", path);
      if (!single.is_array() || !specials.is_object()) throw Error(msg(r.where(path), ": expected single [...] and special_tokens {...}"));
      // The template as (ids to insert, or the sequence itself: empty + flag).
      std::vector<std::pair<bool, std::vector<int64_t>>> parts;
      for (size_t i = 0; i < single.size(); ++i) {
        const json& item = single[i];
        const std::string ip = msg(path, ".single[", i, "]");
        if (item.contains("Sequence")) {
          if (r.str(item["Sequence"], "id", ip + ".Sequence") != "A") {
            throw Error(msg(r.where(ip), ": a single template may only hold sequence A"));
          }
          parts.push_back({true, {}});
        } else if (item.contains("SpecialToken")) {
          const std::string name = r.str(item["SpecialToken"], "id", ip + ".SpecialToken");
          auto sp = specials.find(name);
          if (sp == specials.end()) throw Error(msg(r.where(ip), ": special token ", quote(name), " is not in special_tokens"));
          const json& ids = r.at(*sp, "ids", path + ".special_tokens." + name);
          std::vector<int64_t> v;
          for (const auto& id : ids) v.push_back(vocab_id(r, id, path + ".special_tokens." + name + ".ids"));
          parts.push_back({false, v});
        } else {
          throw Error(msg(r.where(ip), ": expected {\"Sequence\": ...} or {\"SpecialToken\": ...}"));
        }
      }
      m.post.push_back([parts](std::vector<int64_t>& ids) {
        std::vector<int64_t> out;
        for (const auto& [sequence, v] : parts) {
          if (sequence) out.insert(out.end(), ids.begin(), ids.end()); else out.insert(out.end(), v.begin(), v.end());
        }
        ids = std::move(out);
      });
      return;
    }
    if (type == "BertProcessing" || type == "RobertaProcessing") {
      auto id_of = [&](const char* key) {
        const json& v = r.at(p, key, path);
        if (!v.is_array() || v.size() != 2) throw Error(msg(r.where(path + "." + key), ": expected [token, id]"));
        return vocab_id(r, v[1], path + "." + key);
      };
      const int64_t cls = id_of("cls"), sep = id_of("sep");
      m.post.push_back([cls, sep](std::vector<int64_t>& ids) {
        ids.insert(ids.begin(), cls);
        ids.push_back(sep);
      });
      return;
    }
    r.unsupported(path, "post_processor", type, "TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence");
  };
  post(j.value("post_processor", json()), "post_processor");
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>"}) {
    if (t->eos_ >= 0) break;
    for (const AddedToken& a : m.added) {
      if (a.content == name) t->eos_ = a.id;
    }
    if (t->eos_ < 0) {
      if (auto it = m.model->vocab.find(name); it != m.model->vocab.end()) t->eos_ = it->second;
    }
  }
  return t;
}

std::vector<int64_t> HfTokenizer::encode_plain(std::string_view text) const { return impl_->encode(text); }

std::vector<int64_t> HfTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids = impl_->encode(text);
  for (const auto& p : impl_->post) p(ids);
  return ids;
}

std::string HfTokenizer::token_text(int64_t id) const {
  if (auto it = impl_->added_of_id.find(id); it != impl_->added_of_id.end()) return impl_->added[it->second].content;
  if (id >= 0 && id < static_cast<int64_t>(impl_->model->tokens.size())) return impl_->model->tokens[static_cast<size_t>(id)];
  return "";
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> tokens;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      throw Error(msg("token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab_size(), ")"));
    }
    tokens.push_back(token_text(ids[i]));
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  impl_->decoder(tokens);
  std::string out;
  for (const auto& tok : tokens) out += tok;
  return out;
}

int64_t HfTokenizer::vocab_size() const { return impl_->vocab; }

bool HfTokenizer::is_special(int64_t id) const {
  auto it = impl_->added_of_id.find(id);
  return it != impl_->added_of_id.end() && impl_->added[it->second].special;
}

void HfTokenizer::set_eos(const std::string& token) {
  for (const AddedToken& a : impl_->added) {
    if (a.content == token) {
      eos_ = a.id;
      return;
    }
  }
  if (auto it = impl_->model->vocab.find(token); it != impl_->model->vocab.end()) {
    eos_ = it->second;
    return;
  }
  throw Error(msg("eos_token ", quote(token), " is not in tokenizer.json"));
}

void HfTokenizer::save(const std::string& dir) const {
  std::filesystem::create_directories(dir);
  write_file_atomic((std::filesystem::path(dir) / "tokenizer.json").string(), json_text_);
}

}  // namespace recast::io
