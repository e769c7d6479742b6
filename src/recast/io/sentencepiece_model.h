#pragma once

// A SentencePiece model file (tokenizer.model) read as data, and converted to
// a tokenizer.json the way transformers 5 does it.
//
// transformers 5 has no SentencePiece tokenizer at run time: it reads the
// model's pieces and builds a `tokenizers` pipeline from them
// (convert_to_native_format). recast builds the same pipeline as a
// tokenizer.json document and runs it with io/hf_tokenizer.h, so a
// tokenizer.model-only directory gives transformers' ids, which differ from
// SentencePiece's own where the pipeline differs (runs of spaces are kept,
// SentencePiece's remove_extra_whitespaces is not applied; the dummy prefix
// follows the class). Two pipelines, the two transformers uses:
//   - LlamaTokenizer: BPE over the pieces (merges derived from the
//     vocabulary), byte fallback, no normalizer, Metaspace (prepend "first",
//     or "always" with legacy, "never" without add_prefix_space; no split);
//     decoders Replace + ByteFallback + Fuse (+ Strip of the prefix);
//   - the generic backend (TokenizersBackend, e.g. model_type mistral): BPE or
//     Unigram as the model says, unk piece and byte fallback from the model,
//     normalizer Replace(" " -> "▁") and no pre-tokenizer (no dummy prefix);
//     decoders Replace (+ ByteFallback + Fuse).
// Control pieces are special added tokens, user-defined pieces plain ones;
// <s> / </s> are added by a TemplateProcessing only when add_bos_token /
// add_eos_token say so (tokenizer_config.json; transformers 5's default is
// neither).
//
// The file is parsed by hand (the protobuf wire format of
// sentencepiece_model.proto's few fields used here) because Debian's
// sentencepiece ships no generated header, and its protobuf copy cannot live
// in a process with LibTorch's (io/sentencepiece.h). Every length is checked
// against the bytes left; an error names the file and the field.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace recast::io {

struct SentencePieceModel {
  enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };
  struct Piece {
    std::string text;
    float score = 0;
    int type = Normal;
  };
  std::vector<Piece> pieces;
  int model_type = 1;  // 1 unigram, 2 bpe, 3 word, 4 char
  bool byte_fallback = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  std::string precompiled_charsmap;  // empty for identity normalisation
};

// Throws recast::Error naming `source` on a malformed file.
SentencePieceModel parse_sentencepiece_model(std::string_view bytes, const std::string& source);

struct SentencePieceConversion {
  enum Style { Llama, Generic } style = Llama;
  bool add_bos = false, add_eos = false;
  bool legacy = false, add_prefix_space = true;    // Llama only
  std::string bos = "<s>", eos = "</s>", unk = "<unk>";  // Llama's named tokens
};

// True when `style` can be built exactly for this model (the generic
// pipeline needs SentencePiece's precompiled normaliser, which recast does
// not implement, when the model has one).
bool can_convert(const SentencePieceModel& model, SentencePieceConversion::Style style);

// The tokenizer.json document transformers 5 builds (compact JSON text).
std::string sentencepiece_to_tokenizer_json(const SentencePieceModel& model, const SentencePieceConversion& c);

}  // namespace recast::io
