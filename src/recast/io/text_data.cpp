#include "recast/io/text_data.h"

#include "recast/core/error.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace recast::io {
namespace {

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(msg(path, ": cannot open for reading"));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw Error(msg(path, ": read failed"));
  return os.str();
}

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

std::string extension(const std::string& path) { return fs::path(path).extension().string(); }

const std::string& text_field_of(const nlohmann::json& obj, const std::string& field,
                                 const std::string& source) {
  if (!obj.is_object()) {
    throw Error(msg(source, ": expected a JSON object, found ", json_type_name(obj)));
  }
  auto it = obj.find(field);
  if (it == obj.end()) throw Error(msg(source, ": no field ", quote(field)));
  if (!it->is_string()) {
    throw Error(msg(source, ": field ", quote(field), ": expected a string, found ",
                    json_type_name(*it)));
  }
  return it->get_ref<const std::string&>();
}

// Calls fn(line_number, line) for each non-blank line.
template <typename Fn>
void for_each_line(const std::string& text, Fn fn) {
  size_t start = 0;
  int64_t line = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    ++line;
    std::string_view row(text.data() + start, end - start);
    if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
    if (row.find_first_not_of(" \t") != std::string_view::npos) fn(line, row);
    start = end + 1;
  }
}

void read_file_documents(const std::string& path, const std::string& field,
                         std::vector<Document>& out) {
  const std::string text = read_whole(path);
  const std::string ext = extension(path);
  if (ext == ".jsonl") {
    for_each_line(text, [&](int64_t line, std::string_view row) {
      const std::string source = msg(path, ":", line);
      out.push_back({source, text_field_of(parse_json_strict(row, source), field, source)});
    });
  } else if (ext == ".json") {
    const nlohmann::json doc = parse_json_strict(text, path);
    if (doc.is_array()) {
      for (size_t i = 0; i < doc.size(); ++i) {
        const std::string source = msg(path, "[", i, "]");
        out.push_back({source, text_field_of(doc[i], field, source)});
      }
    } else {
      out.push_back({path, text_field_of(doc, field, path)});
    }
  } else {
    check_utf8(text, path);
    out.push_back({path, text});
  }
}

}  // namespace

void check_utf8(const std::string& text, const std::string& source) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      throw Error(msg(source, ": invalid UTF-8 at byte ", i));
    }
    if (i + len > n) throw Error(msg(source, ": invalid UTF-8 at byte ", i, " (truncated)"));
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) throw Error(msg(source, ": invalid UTF-8 at byte ", i));
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    const bool overlong = (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
                          (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      throw Error(msg(source, ": invalid UTF-8 at byte ", i));
    }
    i += len;
  }
}

std::vector<std::string> expand_text_spec(const std::string& spec) {
  std::vector<std::string> files;
  std::error_code exists_error;
  if (has_glob_chars(spec) && !fs::exists(spec, exists_error)) {
    glob_t g{};
    const int rc = ::glob(spec.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) {
        if (is_regular_file(g.gl_pathv[i])) files.emplace_back(g.gl_pathv[i]);
      }
    }
    globfree(&g);
    if (files.empty()) throw Error(msg("data ", quote(spec), ": no file matches the pattern"));
  } else if (is_directory(spec)) {
    std::vector<std::string> txt, json;
    for (const auto& e : fs::recursive_directory_iterator(spec)) {
      if (!e.is_regular_file()) continue;
      const std::string ext = e.path().extension().string();
      if (ext == ".txt") txt.push_back(e.path().string());
      if (ext == ".json" || ext == ".jsonl") json.push_back(e.path().string());
    }
    files = txt.empty() ? json : txt;
    if (files.empty()) {
      throw Error(msg(spec, ": no .txt, .json or .jsonl files in the directory"));
    }
  } else if (is_regular_file(spec)) {
    files.push_back(spec);
  } else if (const std::string problem = path_problem(spec); problem != "does not exist") {
    throw Error(msg("data ", quote(spec), ": ", problem));
  } else {
    throw Error(msg("data ", quote(spec),
                    ": does not exist (and is not a named data set: sotu, moby-dick, "
                    "spam-assassin, fashion-mnist)"));
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<Document> read_text_documents(const std::string& spec, const std::string& field) {
  std::vector<Document> docs;
  for (const auto& f : expand_text_spec(spec)) read_file_documents(f, field, docs);
  if (docs.empty()) throw Error(msg(spec, ": no documents"));
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.text.size();
  if (bytes == 0) throw Error(msg(spec, ": empty data set (every document is empty)"));
  return docs;
}

LabeledTexts read_labeled_jsonl(const std::string& path, const std::string& text_field,
                                const std::string& label_field) {
  const std::string text = read_whole(path);
  struct Raw {
    std::string source, text;
    nlohmann::json label;
  };
  std::vector<Raw> raw;
  bool any_int = false, any_string = false;
  for_each_line(text, [&](int64_t line, std::string_view row) {
    const std::string source = msg(path, ":", line);
    nlohmann::json obj = parse_json_strict(row, source);
    const std::string& t = text_field_of(obj, text_field, source);
    auto it = obj.find(label_field);
    if (it == obj.end()) throw Error(msg(source, ": no field ", quote(label_field)));
    if (it->is_number_integer()) {
      if (it->get<int64_t>() < 0) {
        throw Error(msg(source, ": label ", it->get<int64_t>(), " is negative"));
      }
      any_int = true;
    } else if (it->is_string()) {
      any_string = true;
    } else {
      throw Error(msg(source, ": field ", quote(label_field),
                      ": expected an integer or a string, found ", json_type_name(*it)));
    }
    if (any_int && any_string) {
      throw Error(msg(source, ": labels mix integers and strings"));
    }
    raw.push_back({source, t, *it});
  });
  if (raw.empty()) throw Error(msg(path, ": empty data set (no records)"));
  LabeledTexts out;
  if (any_string) {
    std::set<std::string> names;
    for (const auto& r : raw) names.insert(r.label.get<std::string>());
    out.classes.assign(names.begin(), names.end());
    std::map<std::string, int64_t> id;
    for (size_t i = 0; i < out.classes.size(); ++i) id[out.classes[i]] = static_cast<int64_t>(i);
    for (auto& r : raw) out.items.push_back({r.source, r.text, id[r.label.get<std::string>()]});
  } else {
    int64_t max_label = 0;
    for (auto& r : raw) {
      max_label = std::max(max_label, r.label.get<int64_t>());
      out.items.push_back({r.source, r.text, r.label.get<int64_t>()});
    }
    if (max_label >= 1'000'000) throw Error(msg(path, ": label ", max_label, " is too large"));
    for (int64_t i = 0; i <= max_label; ++i) out.classes.push_back(std::to_string(i));
  }
  return out;
}

}  // namespace recast::io
