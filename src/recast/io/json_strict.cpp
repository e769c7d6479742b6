#include "recast/io/json_strict.h"

#include "recast/core/error.h"

#include <cstdio>
#include <fstream>
#include <set>
#include <vector>

namespace recast::io {

nlohmann::json parse_json_strict(std::string_view text, const std::string& source) {
  using nlohmann::json;
  std::vector<std::set<std::string>> open_objects;
  auto reject_duplicates = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second) {
          throw Error(msg(source, ": duplicate JSON key ", quote(key)));
        }
        break;
      }
      default: break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), reject_duplicates);
  } catch (const json::parse_error& e) {
    // nlohmann quotes the bytes it last read: keep the message printable.
    std::string what;
    for (unsigned char c : std::string_view(e.what())) {
      if (c < 0x20 || c >= 0x7f) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        what += buf;
      } else {
        what += static_cast<char>(c);
      }
    }
    throw Error(msg(source, ": invalid JSON (", what, ")"));
  }
}

std::string read_file_capped(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(msg(path, ": cannot open for reading"));
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > max_bytes) {
      throw Error(msg(path, ": file larger than the ", max_bytes, "-byte limit"));
    }
  }
  if (in.bad()) throw Error(msg(path, ": read error"));
  return text;
}

nlohmann::json read_json_file(const std::string& path, size_t max_bytes) {
  return parse_json_strict(read_file_capped(path, max_bytes), path);
}

std::string json_type_name(const nlohmann::json& value) {
  if (value.is_number_unsigned()) return "non-negative integer";
  if (value.is_number_integer()) return "negative integer";
  if (value.is_number_float()) return "floating-point number";
  return value.type_name();
}

}  // namespace recast::io
