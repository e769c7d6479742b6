#pragma once

// Text the trainer reads: plain UTF-8 files, directories and globs of them, and
// JSON / JSONL documents with a text field (optionally a label field for
// classification). Every error names the file (and line for JSONL).

#include <cstdint>
#include <string>
#include <vector>

namespace recast::io {

struct Document {
  std::string source;  // "file" or "file:LINE"
  std::string text;
};

// SPEC is a file, a directory or a glob pattern (*, ?, [..]):
//   *.txt / *.md / other  the whole file is one document (UTF-8 checked)
//   *.json                an object with `field`, or an array of such objects
//   *.jsonl               one object per line with `field`
// A directory contributes its *.txt files (recursively, sorted by path); when
// it has none, its *.jsonl and *.json files. No documents is an error.
std::vector<Document> read_text_documents(const std::string& spec,
                                          const std::string& field = "text");

struct LabeledText {
  std::string source;
  std::string text;
  int64_t label = 0;
};

struct LabeledTexts {
  std::vector<LabeledText> items;
  std::vector<std::string> classes;  // label id -> name
};

// JSONL with {"text": ..., "label": ...}: integer labels 0..K-1 (class names
// "0".."K-1"), or string labels (classes sorted by name). Mixed kinds, negative
// labels and missing fields are errors naming file and line.
LabeledTexts read_labeled_jsonl(const std::string& path, const std::string& text_field = "text",
                                const std::string& label_field = "label");

// Files matching SPEC as read_text_documents sees them (sorted).
std::vector<std::string> expand_text_spec(const std::string& spec);

// Throws Error("SOURCE: invalid UTF-8 at byte N") when `text` is not UTF-8.
void check_utf8(const std::string& text, const std::string& source);

}  // namespace recast::io
