#include "recast/io/tokenizer.h"

#include "recast/core/error.h"
#include "recast/io/byte_level.h"
#include "recast/io/file.h"
#include "recast/io/hf_tokenizer.h"
#include "recast/io/json_strict.h"
#include "recast/io/sentencepiece.h"
#include "recast/io/sentencepiece_model.h"
#include "recast/core/log.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>

namespace recast::io {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet = [] {
    ByteLevelAlphabet a;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
      append_utf8(a.symbol[b], cp);
      a.byte_of[cp] = static_cast<uint8_t>(b);
    }
    return a;
  }();
  return alphabet;
}

namespace {

// GPT-2's pre-tokenisation (openai/gpt-2 encoder.py), Unicode-aware.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Splits a valid UTF-8 string into code points.
std::vector<uint32_t> code_points(std::string_view s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n && i + k < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

// Splits `text` around whole occurrences of any special token; calls
// on_text(span) for ordinary text and on_special(index) for a special.
template <typename OnText, typename OnSpecial>
void split_specials(std::string_view text, const std::vector<std::string>& specials, OnText on_text,
                    OnSpecial on_special) {
  size_t start = 0;
  while (start <= text.size()) {
    size_t best = std::string_view::npos, which = 0;
    for (size_t i = 0; i < specials.size(); ++i) {
      size_t at = text.find(specials[i], start);
      if (at < best || (at == best && at != std::string_view::npos &&
                        specials[i].size() > specials[which].size())) {
        best = at;
        which = i;
      }
    }
    if (best == std::string_view::npos) {
      if (start < text.size()) on_text(text.substr(start));
      return;
    }
    if (best > start) on_text(text.substr(start, best - start));
    on_special(which);
    start = best + specials[which].size();
  }
}

void check_ids(const std::vector<int64_t>& ids, int64_t vocab) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw Error(msg("token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ",
                      vocab, ")"));
    }
  }
}

}  // namespace

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

ByteTokenizer::ByteTokenizer(std::vector<std::string> specials) : specials_(std::move(specials)) {}

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  split_specials(
      text, specials_,
      [&](std::string_view part) {
        for (unsigned char c : part) out.push_back(c);
      },
      [&](size_t i) { out.push_back(256 + static_cast<int64_t>(i)); });
  return out;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  check_ids(ids, vocab_size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 256) {
      out += static_cast<char>(ids[i]);
    } else {
      out += specials_[static_cast<size_t>(ids[i] - 256)];
    }
  }
  return out;
}

int64_t ByteTokenizer::eos_id() const {
  for (const char* eos : {"<|endoftext|>", "</s>"}) {  // GPT-2's, T5's
    auto it = std::find(specials_.begin(), specials_.end(), eos);
    if (it != specials_.end()) return 256 + (it - specials_.begin());
  }
  return -1;
}

void ByteTokenizer::save(const std::string& dir) const {
  nlohmann::json config = {{"tokenizer_class", "recast-bytes"}, {"special_tokens", specials_}};
  write_file_atomic((std::filesystem::path(dir) / "tokenizer_config.json").string(),
                    config.dump(2) + "\n");
}

BpeTokenizer::BpeTokenizer() : regex_(std::make_unique<Regex>()) {}
BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_files(const std::string& vocab_json,
                                                       const std::string& merges_txt) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  nlohmann::json vocab = read_json_file(vocab_json);
  if (!vocab.is_object() || vocab.empty()) {
    throw Error(msg(vocab_json, ": expected a non-empty JSON object mapping tokens to ids"));
  }
  t->id_to_token_.assign(vocab.size(), std::string());
  std::vector<bool> seen(vocab.size(), false);
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() >= static_cast<int64_t>(vocab.size())) {
      throw Error(msg(vocab_json, ": token ", quote(token), ": id ", id.dump(),
                      " is not an integer in [0, ", vocab.size(), ")"));
    }
    auto i = static_cast<size_t>(id.get<int64_t>());
    if (seen[i])
      throw Error(msg(vocab_json, ": id ", i, " is given to two tokens (", quote(token), ")"));
    seen[i] = true;
    t->id_to_token_[i] = token;
    t->token_to_id_[token] = static_cast<int64_t>(i);
    if (token.size() > 4 && token.compare(0, 2, "<|") == 0 &&
        token.compare(token.size() - 2, 2, "|>") == 0) {
      t->specials_.push_back(token);
    }
  }
  std::ifstream in(merges_txt);
  if (!in) throw Error(msg(merges_txt, ": cannot open"));
  std::string line;
  int line_no = 0, rank = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string::npos) {
      throw Error(msg(merges_txt, ": line ", line_no,
                      ": expected two symbols separated by one space, found ", quote(line)));
    }
    t->merge_rank_.emplace(line, rank++);
  }
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) {
    if (!t->token_to_id_.count(alphabet.symbol[b])) {
      throw Error(msg(vocab_json, ": no token for byte ", b, " (", quote(alphabet.symbol[b]),
                      "): not a byte-level BPE vocabulary"));
    }
  }
  int error = 0;
  PCRE2_SIZE offset = 0;
  t->regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                                  PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!t->regex_->code)
    throw Error(msg("internal: GPT-2 pattern does not compile (PCRE2 error ", error, ")"));
  return t;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int64_t>& out) const {
  std::vector<std::string> word;
  for (unsigned char c : piece) word.push_back(byte_level_alphabet().symbol[c]);
  while (word.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = merge_rank_.find(word[i] + " " + word[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    const std::string left = word[at], right = word[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size(); ++i) {
      if (i + 1 < word.size() && word[i] == left && word[i + 1] == right) {
        merged.push_back(left + right);
        ++i;
      } else {
        merged.push_back(word[i]);
      }
    }
    word = std::move(merged);
  }
  for (const std::string& symbol : word) {
    auto it = token_to_id_.find(symbol);
    if (it == token_to_id_.end())
      throw Error(msg("BPE produced ", quote(symbol), ", which is not in the vocabulary"));
    out.push_back(it->second);
  }
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out;
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create_from_pattern(regex_->code, nullptr), pcre2_match_data_free);
  auto encode_text = [&](std::string_view part) {
    PCRE2_SIZE start = 0;
    while (start < part.size()) {
      int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(part.data()), part.size(),
                           start, 0, match.get(), nullptr);
      if (rc < 0) {
        if (rc == PCRE2_ERROR_NOMATCH) break;
        PCRE2_SIZE bad = pcre2_get_startchar(match.get());
        throw Error(msg("text is not valid UTF-8 (PCRE2 error ", rc, " near byte ",
                        static_cast<size_t>(part.data() - text.data()) + bad, ")"));
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
      if (ov[1] == ov[0]) break;  // the pattern never matches empty; guard anyway
      encode_piece(part.substr(ov[0], ov[1] - ov[0]), out);
      start = ov[1];
    }
  };
  split_specials(text, specials_, encode_text,
                 [&](size_t i) { out.push_back(token_to_id_.at(specials_[i])); });
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  check_ids(ids, vocab_size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string& token = id_to_token_[static_cast<size_t>(ids[i])];
    bool special = std::find(specials_.begin(), specials_.end(), token) != specials_.end();
    if (special) {
      out += token;
      continue;
    }
    const ByteLevelAlphabet& alphabet = byte_level_alphabet();
    for (uint32_t cp : code_points(token)) {
      auto it = alphabet.byte_of.find(cp);
      out += it == alphabet.byte_of.end() ? '?' : static_cast<char>(it->second);
    }
  }
  return out;
}

bool BpeTokenizer::is_special(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  const std::string& token = id_to_token_[static_cast<size_t>(id)];
  return std::find(specials_.begin(), specials_.end(), token) != specials_.end();
}

int64_t BpeTokenizer::eos_id() const {
  auto it = token_to_id_.find("<|endoftext|>");
  return it == token_to_id_.end() ? -1 : it->second;
}

void BpeTokenizer::save(const std::string& dir) const {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t i = 0; i < id_to_token_.size(); ++i) vocab[id_to_token_[i]] = i;
  std::vector<const std::string*> merges(merge_rank_.size());
  for (const auto& [pair, rank] : merge_rank_) merges[static_cast<size_t>(rank)] = &pair;
  std::string text = "#version: 0.2\n";
  for (const auto* m : merges) {
    if (m) text += *m + "\n";  // a duplicate line in the source left a gap
  }
  const std::filesystem::path d(dir);
  write_file_atomic((d / "vocab.json").string(), vocab.dump() + "\n");
  write_file_atomic((d / "merges.txt").string(), text);
}

namespace {

bool config_flag(const nlohmann::json& config, const std::string& config_path, const char* key, bool fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw Error(msg(config_path, ": ", key, ": expected true or false, found ", it->dump()));
  return it->get<bool>();
}

// What transformers adds around a SentencePiece model run as one:
// T5Tokenizer (spiece.model, or any model of a T5-family checkpoint) appends
// </s> and has `extra_ids` sentinels (100 unless the config says otherwise);
// others get <s> / </s> only as tokenizer_config.json says.
SentencePieceConventions sentencepiece_conventions(const nlohmann::json& config, const char* file,
                                                   const std::string& config_path, bool t5,
                                                   const std::string& cls) {
  SentencePieceConventions c;
  c.file = file;
  c.add_bos = config_flag(config, config_path, "add_bos_token", false);
  c.add_eos = config_flag(config, config_path, "add_eos_token", t5);
  c.tokenizer_class = cls.empty() ? (t5 ? "T5Tokenizer" : "LlamaTokenizer") : cls;
  if (t5) {
    c.extra_ids = 100;
    auto it = config.find("extra_ids");
    if (it != config.end() && !it->is_null()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 100000) {
        throw Error(msg(config_path, ": extra_ids: expected an integer in [0, 100000], found ",
                        it->dump()));
      }
      c.extra_ids = it->get<int64_t>();
    }
  }
  return c;
}


// A named token of tokenizer_config.json: a string or {"content": ...}.
std::string config_token(const nlohmann::json& config, const std::string& config_path, const char* key,
                         const std::string& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  const nlohmann::json& t = it->is_object() && it->contains("content") ? (*it)["content"] : *it;
  if (!t.is_string() || t.get<std::string>().empty()) {
    throw Error(msg(config_path, ": ", key, ": expected a token string, found ", it->dump()));
  }
  return t.get<std::string>();
}

// A SentencePiece model file, as transformers 5 loads it (docs/models.md,
// "tokenizer.model"): the class comes from tokenizer_config.json's
// tokenizer_class, else from config.json's model_type. T5's classes keep the
// model as SentencePiece (with </s> and the sentinels); LlamaTokenizer and
// the generic backend (model_type mistral) convert it to a tokenizers
// pipeline, which recast builds as a tokenizer.json (io/sentencepiece_model.h).
// Other classes are run by SentencePiece itself with Llama's conventions,
// said at info level.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model, const char* file,
                                              const nlohmann::json& config, const std::string& config_path,
                                              const std::string& model_type) {
  const auto named = config.is_object() ? config.find("tokenizer_class") : config.end();
  std::string cls = named != config.end() && named->is_string() ? named->get<std::string>() : "";
  const std::string base = cls.size() > 4 && cls.compare(cls.size() - 4, 4, "Fast") == 0 ? cls.substr(0, cls.size() - 4) : cls;
  const bool t5_family = model_type == "t5" || model_type == "mt5" || model_type == "umt5" ||
                         model_type == "longt5";
  const bool t5 = std::string(file) == "spiece.model" ||
                  (cls.empty() ? t5_family : base == "T5Tokenizer" || base == "MT5Tokenizer");
  if (!t5) {
    SentencePieceConversion c;
    bool convert = true;
    if (base == "LlamaTokenizer" || (cls.empty() && (model_type.empty() || model_type == "llama"))) {
      c.style = SentencePieceConversion::Llama;
    } else if (base == "TokenizersBackend" || base == "PreTrainedTokenizer" ||
               (cls.empty() && model_type == "mistral")) {
      c.style = SentencePieceConversion::Generic;
    } else {
      convert = false;
    }
    const std::string bytes = read_sentencepiece_file(model);
    const SentencePieceModel proto = parse_sentencepiece_model(bytes, model);
    if (convert && can_convert(proto, c.style)) {
      c.add_bos = config_flag(config, config_path, "add_bos_token", false);
      c.add_eos = config_flag(config, config_path, "add_eos_token", false);
      c.legacy = config_flag(config, config_path, "legacy", false);
      c.add_prefix_space = config_flag(config, config_path, "add_prefix_space", true);
      c.bos = config_token(config, config_path, "bos_token", c.bos);
      c.eos = config_token(config, config_path, "eos_token", c.eos);
      c.unk = config_token(config, config_path, "unk_token", c.unk);
      auto t = HfTokenizer::from_json_text(sentencepiece_to_tokenizer_json(proto, c), model);
      t->set_kind("tokenizer.model");
      if (config.contains("eos_token")) t->set_eos(c.eos);
      return t;
    }
    log::info(model, ": ", convert ? "its precompiled normaliser" : "tokenizer_class " + quote(cls),
              " is not converted as transformers does; encoding with SentencePiece itself");
  }
  return SentencePieceTokenizer::from_file(model, sentencepiece_conventions(config, file, config_path, t5, cls));
}

}  // namespace

std::string tokenizer_source(const std::string& dir) {
  const std::filesystem::path d(dir);
  if (is_regular_file((d / "tokenizer.json").string())) return (d / "tokenizer.json").string();
  for (const char* file : {"tokenizer.model", "spiece.model"}) {
    if (is_regular_file((d / file).string())) return (d / file).string();
  }
  if (is_regular_file((d / "vocab.json").string()) && is_regular_file((d / "merges.txt").string())) {
    return (d / "vocab.json").string() + " + merges.txt";
  }
  return (d / "tokenizer_config.json").string();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  const std::filesystem::path d(dir);
  const auto config_path = (d / "tokenizer_config.json").string();
  nlohmann::json config = nlohmann::json::object();
  if (is_regular_file(config_path)) config = read_json_file(config_path);
  // Precedence (docs/models.md): tokenizer.json, then a SentencePiece model,
  // then GPT-2's vocab.json + merges.txt.
  const auto hf = (d / "tokenizer.json").string();
  if (is_regular_file(hf)) {
    auto t = HfTokenizer::from_file(hf);
    if (config.is_object() && config.contains("eos_token")) {
      const nlohmann::json& eos = config["eos_token"];
      const nlohmann::json& text = eos.is_object() && eos.contains("content") ? eos["content"] : eos;
      if (text.is_string()) t->set_eos(text.get<std::string>());
    }
    return t;
  }
  for (const char* file : {"tokenizer.model", "spiece.model"}) {
    const auto model = (d / file).string();
    if (!is_regular_file(model)) continue;
    std::string model_type;
    const auto model_config = (d / "config.json").string();
    // The model type picks the class where tokenizer_config.json names none.
    const bool named = config.is_object() && config.contains("tokenizer_class") && config["tokenizer_class"].is_string();
    if (!named && is_regular_file(model_config)) {
      // A malformed config.json is an error naming it, not a silent default.
      const nlohmann::json mc = read_json_file(model_config);
      if (mc.is_object() && mc.contains("model_type") && mc["model_type"].is_string()) {
        model_type = mc["model_type"].get<std::string>();
      }
    }
    return load_sentencepiece(model, file, config, config_path, model_type);
  }
  const auto vocab = (d / "vocab.json").string();
  const auto merges = (d / "merges.txt").string();
  if (is_regular_file(vocab) && is_regular_file(merges))
    return BpeTokenizer::from_files(vocab, merges);
  if (is_regular_file(config_path)) {
    if (config.is_object() && config.value("tokenizer_class", "") == "recast-bytes") {
      std::vector<std::string> specials;
      auto it = config.find("special_tokens");
      if (it != config.end()) {
        if (!it->is_array()) throw Error(msg(config_path, ": special_tokens: expected an array"));
        for (const auto& s : *it) {
          if (!s.is_string() || s.get<std::string>().empty()) {
            throw Error(msg(config_path, ": special_tokens: expected non-empty strings"));
          }
          specials.push_back(s.get<std::string>());
        }
      }
      return std::make_unique<ByteTokenizer>(std::move(specials));
    }
  }
  throw Error(msg(dir, ": no tokenizer (looked for tokenizer.json, tokenizer.model, spiece.model, "
                       "vocab.json + merges.txt, or a tokenizer_config.json of class recast-bytes)"));
}

}  // namespace recast::io
