#pragma once

// GPT-2's byte-level alphabet, shared by the vocab.json + merges.txt tokenizer
// (io/tokenizer.h) and tokenizer.json's ByteLevel components
// (io/hf_tokenizer.h): every byte has a printable stand-in code point
// (openai/gpt-2 encoder.py's bytes_to_unicode), and back.

#include <cstdint>
#include <string>
#include <unordered_map>

namespace recast::io {

struct ByteLevelAlphabet {
  std::string symbol[256];                        // byte -> its stand-in, UTF-8
  std::unordered_map<uint32_t, uint8_t> byte_of;  // stand-in code point -> byte
};
const ByteLevelAlphabet& byte_level_alphabet();

// Appends code point `cp` (< 0x110000) as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

}  // namespace recast::io
