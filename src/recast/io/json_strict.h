#pragma once

// JSON documents recast reads from users' files (config.json, index files):
// parsed with nlohmann-json, but stricter than its defaults, since a duplicate key
// silently keeps the last value there and would hide a corrupt file.

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace recast::io {

// Parses `text` as one JSON value. Rejects syntax errors, invalid UTF-8 and
// duplicate keys in any object; errors name `source` (usually the file path).
nlohmann::json parse_json_strict(std::string_view text, const std::string& source);

// A whole file's bytes, refused beyond `max_bytes` (errors name the path).
std::string read_file_capped(const std::string& path, size_t max_bytes);

// Reads and parses a JSON file (size-capped at `max_bytes`).
nlohmann::json read_json_file(const std::string& path, size_t max_bytes = 256u << 20);

// Human name of a JSON value's type, for "expected X, found Y" messages.
std::string json_type_name(const nlohmann::json& value);

}  // namespace recast::io
