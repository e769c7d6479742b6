#include "recast/io/sentencepiece_model.h"

#include "recast/core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <unordered_map>

namespace recast::io {
namespace {

// One protobuf message's bytes, read field by field.
class Wire {
 public:
  Wire(std::string_view bytes, const std::string& source, std::string where)
      : p_(bytes), source_(source), where_(std::move(where)) {}

  bool done() const { return pos_ >= p_.size(); }

  // The next field's number and wire type.
  std::pair<uint32_t, int> key() {
    const uint64_t k = varint();
    const auto field = static_cast<uint32_t>(k >> 3);
    const int wire = static_cast<int>(k & 7);
    if (field == 0 || wire == 3 || wire == 4 || wire > 5) fail("field " + std::to_string(field) + " has wire type " + std::to_string(wire));
    return {field, wire};
  }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (done()) fail("truncated varint");
      const auto b = static_cast<unsigned char>(p_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    fail("varint longer than 10 bytes");
  }

  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > p_.size() - pos_) fail("a field of " + std::to_string(n) + " bytes with " + std::to_string(p_.size() - pos_) + " left");
    const auto s = p_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }

  float fixed32_float() {
    if (p_.size() - pos_ < 4) fail("truncated float");
    uint32_t u = 0;
    for (int i = 0; i < 4; ++i) u |= static_cast<uint32_t>(static_cast<unsigned char>(p_[pos_ + i])) << (8 * i);
    pos_ += 4;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }

  void skip(int wire) {
    if (wire == 0) {
      varint();
    } else if (wire == 2) {
      bytes();
    } else {
      const size_t n = wire == 1 ? 8 : 4;
      if (p_.size() - pos_ < n) fail("truncated fixed-width field");
      pos_ += n;
    }
  }

  int32_t int32() { return static_cast<int32_t>(static_cast<uint32_t>(varint())); }

  void expect(int wire, int want, const char* field) {
    if (wire != want) fail(std::string(field) + " has wire type " + std::to_string(wire) + ", expected " + std::to_string(want));
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(msg(source_, ": not a SentencePiece model (", where_, ": ", what, " at byte ", pos_, ")"));
  }

 private:
  std::string_view p_;
  size_t pos_ = 0;
  const std::string& source_;
  std::string where_;
};

void parse_piece(std::string_view bytes, const std::string& source, size_t index, SentencePieceModel& m) {
  Wire w(bytes, source, "pieces[" + std::to_string(index) + "]");
  SentencePieceModel::Piece piece;
  bool has_text = false;
  while (!w.done()) {
    const auto [field, wire] = w.key();
    if (field == 1) {
      w.expect(wire, 2, "piece");
      piece.text = std::string(w.bytes());
      has_text = true;
    } else if (field == 2) {
      w.expect(wire, 5, "score");
      piece.score = w.fixed32_float();
    } else if (field == 3) {
      w.expect(wire, 0, "type");
      piece.type = w.int32();
      if (piece.type < 1 || piece.type > 6) w.fail("type " + std::to_string(piece.type) + " is not one of 1..6");
    } else {
      w.skip(wire);
    }
  }
  if (!has_text || piece.text.empty()) w.fail("a piece without text");
  m.pieces.push_back(std::move(piece));
}

void parse_trainer(std::string_view bytes, const std::string& source, SentencePieceModel& m) {
  Wire w(bytes, source, "trainer_spec");
  while (!w.done()) {
    const auto [field, wire] = w.key();
    switch (field) {
      case 3: w.expect(wire, 0, "model_type"); m.model_type = w.int32(); break;
      case 35: w.expect(wire, 0, "byte_fallback"); m.byte_fallback = w.varint() != 0; break;
      case 40: w.expect(wire, 0, "unk_id"); m.unk_id = w.int32(); break;
      case 41: w.expect(wire, 0, "bos_id"); m.bos_id = w.int32(); break;
      case 42: w.expect(wire, 0, "eos_id"); m.eos_id = w.int32(); break;
      case 43: w.expect(wire, 0, "pad_id"); m.pad_id = w.int32(); break;
      case 45: w.expect(wire, 2, "unk_piece"); m.unk_piece = std::string(w.bytes()); break;
      case 46: w.expect(wire, 2, "bos_piece"); m.bos_piece = std::string(w.bytes()); break;
      case 47: w.expect(wire, 2, "eos_piece"); m.eos_piece = std::string(w.bytes()); break;
      case 48: w.expect(wire, 2, "pad_piece"); m.pad_piece = std::string(w.bytes()); break;
      default: w.skip(wire);
    }
  }
  if (m.model_type < 1 || m.model_type > 4) w.fail("model_type " + std::to_string(m.model_type) + " is not one of 1..4");
}

void parse_normalizer(std::string_view bytes, const std::string& source, SentencePieceModel& m) {
  Wire w(bytes, source, "normalizer_spec");
  while (!w.done()) {
    const auto [field, wire] = w.key();
    if (field == 2) {
      w.expect(wire, 2, "precompiled_charsmap");
      m.precompiled_charsmap = std::string(w.bytes());
    } else {
      w.skip(wire);
    }
  }
}

// Code points of a UTF-8 piece (byte offsets of each start, plus the end).
std::vector<size_t> code_point_starts(const std::string& s) {
  std::vector<size_t> at;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) at.push_back(i);
  }
  at.push_back(s.size());
  return at;
}

// transformers' generate_merges(vocab): every split of every piece into two
// pieces of the vocabulary, ordered by the merged piece's id, then by the
// left part's length in code points (then the right's).
std::vector<std::pair<std::string, std::string>> generate_merges(
    const std::vector<std::string>& order, const std::unordered_map<std::string, int64_t>& vocab) {
  struct Merge {
    int64_t id;
    size_t left_len, right_len;
    std::string left, right;
  };
  std::vector<Merge> merges;
  for (const std::string& piece : order) {
    const int64_t id = vocab.at(piece);
    const auto at = code_point_starts(piece);
    const size_t n = at.size() - 1;
    for (size_t k = 1; k < n; ++k) {
      std::string l = piece.substr(0, at[k]), r = piece.substr(at[k]);
      if (vocab.count(l) && vocab.count(r)) merges.push_back({id, k, n - k, std::move(l), std::move(r)});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tie(a.id, a.left_len, a.right_len) < std::tie(b.id, b.left_len, b.right_len);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (auto& m : merges) out.emplace_back(std::move(m.left), std::move(m.right));
  return out;
}

using ojson = nlohmann::ordered_json;

ojson replace_decoder() {
  return {{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}};
}

// update_post_processor(): "<s>:0 $A:0 </s>:0" as far as asked.
ojson template_processing(const std::vector<std::pair<std::string, int64_t>>& before,
                          const std::vector<std::pair<std::string, int64_t>>& after) {
  auto special = [](const std::string& t, int type) { return ojson{{"SpecialToken", {{"id", t}, {"type_id", type}}}}; };
  auto sequence = [](const char* id, int type) { return ojson{{"Sequence", {{"id", id}, {"type_id", type}}}}; };
  ojson single = ojson::array(), pair = ojson::array(), tokens = ojson::object();
  for (const auto& [t, id] : before) single.push_back(special(t, 0));
  single.push_back(sequence("A", 0));
  for (const auto& [t, id] : after) single.push_back(special(t, 0));
  pair = single;
  for (const auto& [t, id] : before) pair.push_back(special(t, 1));
  pair.push_back(sequence("B", 1));
  for (const auto& [t, id] : after) pair.push_back(special(t, 1));
  for (const auto* list : {&before, &after}) {
    for (const auto& [t, id] : *list) tokens[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
  }
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", tokens}};
}

}  // namespace

SentencePieceModel parse_sentencepiece_model(std::string_view bytes, const std::string& source) {
  SentencePieceModel m;
  Wire w(bytes, source, "model");
  while (!w.done()) {
    const auto [field, wire] = w.key();
    if (field == 1) {
      w.expect(wire, 2, "pieces");
      parse_piece(w.bytes(), source, m.pieces.size(), m);
    } else if (field == 2) {
      w.expect(wire, 2, "trainer_spec");
      parse_trainer(w.bytes(), source, m);
    } else if (field == 3) {
      w.expect(wire, 2, "normalizer_spec");
      parse_normalizer(w.bytes(), source, m);
    } else {
      w.skip(wire);
    }
  }
  if (m.pieces.empty()) w.fail("no pieces");
  const auto n = static_cast<int64_t>(m.pieces.size());
  if (m.unk_id < 0 || m.unk_id >= n) w.fail("unk_id " + std::to_string(m.unk_id) + " outside the " + std::to_string(n) + " pieces");
  return m;
}

bool can_convert(const SentencePieceModel& model, SentencePieceConversion::Style style) {
  return style == SentencePieceConversion::Llama || model.precompiled_charsmap.empty();
}

std::string sentencepiece_to_tokenizer_json(const SentencePieceModel& m, const SentencePieceConversion& c) {
  RECAST_CHECK(can_convert(m, c.style), "this SentencePiece model normalises with a precompiled charsmap, "
               "which recast's tokenizer.json pipeline does not implement");
  const bool llama = c.style == SentencePieceConversion::Llama;
  // The vocabulary as transformers' dict comprehension makes it (a repeated
  // piece keeps its last id).
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> order;
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    auto [it, fresh] = vocab.insert_or_assign(m.pieces[i].text, static_cast<int64_t>(i));
    if (fresh) order.push_back(m.pieces[i].text);
  }
  const bool unigram = !llama && m.model_type == 1;
  ojson model;
  if (unigram) {
    ojson v = ojson::array();
    for (const auto& p : m.pieces) v.push_back({p.text, p.score});
    model = {{"type", "Unigram"}, {"unk_id", m.unk_id}, {"vocab", v}, {"byte_fallback", m.byte_fallback}};
  } else {
    ojson v = ojson::object();
    for (const auto& t : order) v[t] = vocab.at(t);
    ojson merges = ojson::array();
    for (auto& [l, r] : generate_merges(order, vocab)) merges.push_back({l, r});
    model = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", llama ? ojson(nullptr) : ojson(m.unk_piece)},
             {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", true},
             {"byte_fallback", llama || m.byte_fallback}, {"ignore_merges", false}, {"vocab", v}, {"merges", merges}};
  }

  // Added tokens: control pieces (special), user-defined pieces (plain), and
  // the named unk / bos / eos (special; a new id above the pieces if absent).
  std::map<int64_t, std::pair<std::string, bool>> added;
  int64_t next_id = static_cast<int64_t>(m.pieces.size());
  auto id_of = [&](const std::string& t) {
    auto it = vocab.find(t);
    if (it != vocab.end()) return it->second;
    for (const auto& [id, a] : added) {
      if (a.first == t) return id;
    }
    return next_id++;
  };
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    const int type = m.pieces[i].type;
    if (type == SentencePieceModel::Control || type == SentencePieceModel::UserDefined) {
      added[static_cast<int64_t>(i)] = {m.pieces[i].text, type == SentencePieceModel::Control};
    }
  }
  std::string bos, eos;
  std::vector<std::string> named;
  if (llama) {
    named = {c.unk, c.bos, c.eos};
    bos = c.bos, eos = c.eos;
  } else {
    if (m.unk_id >= 0) named.push_back(m.unk_piece);
    if (m.bos_id >= 0) named.push_back(bos = m.bos_piece);
    if (m.eos_id >= 0) named.push_back(eos = m.eos_piece);
  }
  for (const auto& t : named) {
    const int64_t id = id_of(t);
    added[id] = {t, true};
  }
  ojson added_tokens = ojson::array();
  for (const auto& [id, a] : added) {
    added_tokens.push_back({{"id", id}, {"content", a.first}, {"single_word", false}, {"lstrip", false},
                            {"rstrip", false}, {"normalized", false}, {"special", a.second}});
  }

  std::vector<std::pair<std::string, int64_t>> before, after;
  if (c.add_bos && !bos.empty()) before.emplace_back(bos, id_of(bos));
  if (c.add_eos && !eos.empty()) after.emplace_back(eos, id_of(eos));

  ojson doc = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added_tokens}};
  if (llama) {
    const char* scheme = !c.add_prefix_space ? "never" : c.legacy ? "always" : "first";
    ojson decoders = ojson::array({replace_decoder(), {{"type", "ByteFallback"}}, {{"type", "Fuse"}}});
    if (c.add_prefix_space) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    doc["normalizer"] = nullptr;
    doc["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", scheme}, {"split", false}};
    doc["post_processor"] = template_processing(before, after);
    doc["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  } else {
    ojson decoders = ojson::array({replace_decoder()});
    if (m.byte_fallback) {
      decoders.push_back({{"type", "ByteFallback"}});
      decoders.push_back({{"type", "Fuse"}});
    }
    doc["normalizer"] = {{"type", "Sequence"},
                         {"normalizers", ojson::array({{{"type", "Replace"}, {"pattern", {{"String", " "}}},
                                                        {"content", "\u2581"}}})}};
    doc["pre_tokenizer"] = nullptr;
    doc["post_processor"] = template_processing(before, after);
    doc["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  }
  doc["model"] = model;
  return doc.dump();
}

}  // namespace recast::io
