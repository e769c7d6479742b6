#include "recast/io/safetensors_header.h"

#include "recast/core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>

namespace recast::io {
namespace {

struct DtypeEntry {
  Dtype dtype;
  std::string_view name;
  int bits;
};

constexpr std::array<DtypeEntry, 22> kDtypes = {{
    {Dtype::BOOL, "BOOL", 8},
    {Dtype::F4, "F4", 4},
    {Dtype::F6_E2M3, "F6_E2M3", 6},
    {Dtype::F6_E3M2, "F6_E3M2", 6},
    {Dtype::U8, "U8", 8},
    {Dtype::I8, "I8", 8},
    {Dtype::F8_E5M2, "F8_E5M2", 8},
    {Dtype::F8_E4M3, "F8_E4M3", 8},
    {Dtype::F8_E8M0, "F8_E8M0", 8},
    {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {Dtype::I16, "I16", 16},
    {Dtype::U16, "U16", 16},
    {Dtype::F16, "F16", 16},
    {Dtype::BF16, "BF16", 16},
    {Dtype::I32, "I32", 32},
    {Dtype::U32, "U32", 32},
    {Dtype::F32, "F32", 32},
    {Dtype::C64, "C64", 64},
    {Dtype::F64, "F64", 64},
    {Dtype::I64, "I64", 64},
    {Dtype::U64, "U64", 64},
}};

const DtypeEntry& entry(Dtype dtype) {
  return kDtypes[static_cast<size_t>(dtype)];
}

// Keeps a parser message printable and on one line (it may quote file bytes).
std::string printable(std::string_view text) {
  std::string out;
  for (unsigned char c : text) out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  return out;
}

// SAX handler that builds the header directly (no DOM: a 100 MB header stays
// affordable) and rejects what the DOM would silently accept (duplicate keys).
class HeaderBuilder {
 public:
  explicit HeaderBuilder(const std::string& source) : source_(source) {}

  Header take() { return std::move(header_); }

  bool null() { return value("null"); }
  bool boolean(bool) { return value("boolean"); }
  bool number_integer(int64_t v) {
    if (state_ == State::InShape || state_ == State::InOffsets) {
      fail_tensor(msg(field_name(), " entries must be non-negative integers, found ", v));
    }
    return value("negative integer");
  }
  bool number_unsigned(uint64_t v) {
    if (state_ == State::InShape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail_tensor(msg("shape entry ", v, " is larger than 2^63 - 1"));
      }
      tensor_.shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (state_ == State::InOffsets) {
      if (offsets_.size() == 2) fail_tensor("data_offsets must have exactly 2 entries, found more");
      offsets_.push_back(v);
      return true;
    }
    return value("non-negative integer");
  }
  bool number_float(double, const std::string& text) {
    if (state_ == State::InShape || state_ == State::InOffsets) {
      fail_tensor(
          msg(field_name(), " entries must be non-negative integers, found ", printable(text)));
    }
    return value("floating-point number");
  }
  bool string(std::string& v) {
    if (state_ == State::FieldValue && field_ == Field::Dtype) {
      auto dtype = dtype_from_name(v);
      if (!dtype) {
        fail_tensor(msg("unknown dtype ", quote(v), " (known: ", known_dtype_names(), ")"));
      }
      tensor_.dtype = *dtype;
      state_ = State::InTensor;
      return true;
    }
    if (state_ == State::MetaValue) {
      header_.metadata.emplace(std::move(meta_key_), std::move(v));
      state_ = State::InMeta;
      return true;
    }
    return value("string");
  }
  bool binary(nlohmann::json::binary_t&) { return value("binary"); }

  bool start_object(size_t) {
    switch (state_) {
      case State::Start: state_ = State::Top; return true;
      case State::EntryValue:
        if (entry_ == "__metadata__") {
          state_ = State::InMeta;
        } else {
          tensor_ = TensorInfo{};
          tensor_.name = entry_;
          offsets_.clear();
          seen_ = {};
          state_ = State::InTensor;
        }
        return true;
      case State::Skip: ++skip_depth_; return true;
      default: return value("object");
    }
  }
  bool start_array(size_t) {
    if (state_ == State::FieldValue && field_ == Field::Shape) {
      state_ = State::InShape;
      return true;
    }
    if (state_ == State::FieldValue && field_ == Field::Offsets) {
      state_ = State::InOffsets;
      return true;
    }
    if (state_ == State::Skip) {
      ++skip_depth_;
      return true;
    }
    return value("array");
  }
  bool end_array() {
    if (state_ == State::InShape) {
      state_ = State::InTensor;
      return true;
    }
    if (state_ == State::InOffsets) {
      if (offsets_.size() != 2) {
        fail_tensor(msg("data_offsets must have exactly 2 entries, found ", offsets_.size()));
      }
      tensor_.begin = offsets_[0];
      tensor_.end = offsets_[1];
      state_ = State::InTensor;
      return true;
    }
    return end_skipped();
  }
  bool key(std::string& k) {
    switch (state_) {
      case State::Top:
        if (!entries_.insert(k).second) {
          if (k == "__metadata__") throw Error(msg(source_, ": __metadata__ appears twice"));
          throw Error(msg(source_, ": tensor ", quote(k), ": name appears twice in the header"));
        }
        if (k.find('\0') != std::string::npos) {
          throw Error(msg(source_, ": tensor ", quote(k), ": name contains a NUL character"));
        }
        entry_ = std::move(k);
        state_ = State::EntryValue;
        return true;
      case State::InMeta:
        if (header_.metadata.count(k)) {
          throw Error(msg(source_, ": __metadata__: key ", quote(k), " appears twice"));
        }
        meta_key_ = std::move(k);
        state_ = State::MetaValue;
        return true;
      case State::InTensor: {
        Field f = k == "dtype"          ? Field::Dtype
                  : k == "shape"        ? Field::Shape
                  : k == "data_offsets" ? Field::Offsets
                                        : Field::Unknown;
        if (f == Field::Unknown) {  // ignored, as the reference implementation does
          state_ = State::Skip;
          skip_depth_ = 0;
          return true;
        }
        auto bit = static_cast<unsigned>(f);
        if (seen_[bit]) fail_tensor(msg("field ", quote(k), " appears twice"));
        seen_[bit] = true;
        field_ = f;
        state_ = State::FieldValue;
        return true;
      }
      default: return true;  // keys inside skipped values
    }
  }
  bool end_object() {
    switch (state_) {
      case State::Top: state_ = State::Done; return true;
      case State::InMeta: state_ = State::Top; return true;
      case State::InTensor:
        for (Field f : {Field::Dtype, Field::Shape, Field::Offsets}) {
          if (!seen_[static_cast<unsigned>(f)]) {
            fail_tensor(msg("missing field '", name_of(f), "'"));
          }
        }
        header_.tensors.push_back(std::move(tensor_));
        state_ = State::Top;
        return true;
      default: return end_skipped();
    }
  }
  bool parse_error(size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    throw Error(msg(source_, ": header is not valid JSON at byte ", position, " (",
                    printable(ex.what()), ")"));
  }

 private:
  enum class State {
    Start,
    Top,
    EntryValue,
    InTensor,
    FieldValue,
    InShape,
    InOffsets,
    InMeta,
    MetaValue,
    Skip,
    Done
  };
  enum class Field : unsigned { Dtype, Shape, Offsets, Unknown };

  static const char* name_of(Field f) {
    return f == Field::Dtype ? "dtype" : f == Field::Shape ? "shape" : "data_offsets";
  }
  const char* field_name() const { return name_of(field_); }

  [[noreturn]] void fail_tensor(const std::string& rule) const {
    throw Error(msg(source_, ": tensor ", quote(tensor_.name), ": ", rule));
  }

  // A scalar or container start where the schema expects something else.
  bool value(const char* found) {
    switch (state_) {
      case State::Start: throw Error(msg(source_, ": header must be a JSON object, found ", found));
      case State::EntryValue:
        if (entry_ == "__metadata__") {
          if (std::strcmp(found, "null") == 0) {  // serde reads null as "no metadata"
            state_ = State::Top;
            return true;
          }
          throw Error(msg(source_, ": __metadata__ must be an object of strings, found ", found));
        }
        throw Error(
            msg(source_, ": tensor ", quote(entry_), ": entry must be an object, found ", found));
      case State::FieldValue:
        fail_tensor(msg(field_name(), " must be ", field_ == Field::Dtype ? "a string" : "an array",
                        ", found ", found));
      case State::InShape:
      case State::InOffsets:
        fail_tensor(msg(field_name(), " entries must be non-negative integers, found ", found));
      case State::MetaValue:
        throw Error(msg(source_, ": __metadata__: value of ", quote(meta_key_),
                        " must be a string, found ", found));
      case State::Skip:
        if (skip_depth_ == 0) state_ = State::InTensor;  // a skipped scalar
        return true;
      default: throw Error(msg(source_, ": unexpected ", found, " in header"));
    }
  }
  bool end_skipped() {
    if (state_ != State::Skip) throw Error(msg(source_, ": malformed header"));
    if (--skip_depth_ == 0) state_ = State::InTensor;
    return true;
  }

  const std::string& source_;
  Header header_;
  State state_ = State::Start;
  std::set<std::string> entries_;
  std::string entry_;
  std::string meta_key_;
  TensorInfo tensor_;
  std::vector<uint64_t> offsets_;
  std::array<bool, 3> seen_{};
  Field field_ = Field::Dtype;
  int skip_depth_ = 0;
};

std::optional<uint64_t> checked_numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void validate_layout(Header& header, const std::string& source) {
  for (const TensorInfo& t : header.tensors) {
    auto fail = [&](const std::string& rule) {
      throw Error(msg(source, ": tensor ", quote(t.name), ": ", rule));
    };
    auto numel = checked_numel(t.shape);
    uint64_t bits = 0;
    if (!numel ||
        __builtin_mul_overflow(*numel, static_cast<uint64_t>(dtype_bits(t.dtype)), &bits)) {
      fail(msg("shape ", shape_string(t.shape), " x ", dtype_name(t.dtype),
               " overflows a 64-bit byte count"));
    }
    if (bits % 8 != 0) {
      fail(msg("shape ", shape_string(t.shape), " x ", dtype_name(t.dtype), " is ", bits,
               " bits, not a whole number of bytes"));
    }
    if (t.end < t.begin) {
      fail(msg("data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
    }
    if (t.end - t.begin != bits / 8) {
      fail(msg("data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin,
               " bytes but shape ", shape_string(t.shape), " x ", dtype_name(t.dtype), " needs ",
               bits / 8));
    }
    if (t.end > header.data_bytes) {
      fail(msg("data_offsets [", t.begin, ", ", t.end, "] run past the data area (",
               header.data_bytes, " bytes): file truncated?"));
    }
  }
  // The data area must be covered exactly: no gaps, no overlaps, no trailing
  // bytes (the format's rule against polyglot files and aliasing).
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(header.tensors.size());
  for (const TensorInfo& t : header.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < covered) {
      throw Error(msg(source, ": tensor ", quote(t->name), ": data_offsets [", t->begin, ", ",
                      t->end, "] overlap tensor ", quote(previous->name), " (ends at ", covered,
                      ")"));
    }
    if (t->begin > covered) {
      throw Error(msg(source, ": tensor ", quote(t->name), ": data area bytes [", covered, ", ",
                      t->begin, ") before it belong to no tensor"));
    }
    covered = t->end;
    previous = t;
  }
  if (covered != header.data_bytes) {
    throw Error(msg(source, ": data area has ", header.data_bytes, " bytes but tensors cover ",
                    covered, " (trailing bytes are not allowed)"));
  }
}

}  // namespace

std::string_view dtype_name(Dtype dtype) {
  return entry(dtype).name;
}
int dtype_bits(Dtype dtype) {
  return entry(dtype).bits;
}

std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const auto& e : kDtypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

std::string known_dtype_names() {
  std::string out;
  for (const auto& e : kDtypes) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

uint64_t TensorInfo::numel() const {
  return checked_numel(shape).value_or(0);
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

std::optional<uint64_t> byte_size(Dtype dtype, const std::vector<int64_t>& shape) {
  auto numel = checked_numel(shape);
  uint64_t bits = 0;
  if (!numel || __builtin_mul_overflow(*numel, static_cast<uint64_t>(dtype_bits(dtype)), &bits)) {
    return std::nullopt;
  }
  if (bits % 8 != 0) return std::nullopt;
  return bits / 8;
}

Header parse_header(const uint8_t* bytes, size_t file_size, const std::string& source) {
  if (file_size < 8) {
    throw Error(msg(source, ": file is ", file_size,
                    " bytes, too small for the 8-byte header length of a safetensors file"));
  }
  const uint64_t n = read_u64_le(bytes);
  if (n > kMaxHeaderBytes) {
    throw Error(msg(source, ": header length ", n, " exceeds the ", kMaxHeaderBytes,
                    "-byte limit (not a safetensors file?)"));
  }
  if (n > file_size - 8) {
    throw Error(msg(source, ": header length ", n, " runs past the end of the file (", file_size,
                    " bytes): file truncated?"));
  }
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (n >= 3 && std::memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
    throw Error(msg(source, ": header starts with a byte-order mark; expected '{'"));
  }
  // nlohmann-json stops at a NUL byte as if the input ended there; JSON allows
  // none, and the reference rejects them (e.g. NUL instead of space padding).
  if (const void* nul = std::memchr(text, '\0', n)) {
    throw Error(msg(source, ": header contains a NUL byte at offset ",
                    static_cast<const char*>(nul) - text, " (JSON allows none)"));
  }
  HeaderBuilder builder(source);
  nlohmann::json::sax_parse(text, text + n, &builder);
  Header header = builder.take();
  header.header_bytes = n;
  header.data_offset = 8 + n;
  header.data_bytes = file_size - 8 - n;
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  validate_layout(header, source);
  return header;
}

}  // namespace recast::io
