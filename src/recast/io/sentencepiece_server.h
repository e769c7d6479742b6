#pragma once

namespace recast::io {

// The sentencepiece library behind a pipe (stdin / stdout), for
// SentencePieceTokenizer (io/sentencepiece.h). Returns when stdin closes.
int sentencepiece_server();

}  // namespace recast::io
