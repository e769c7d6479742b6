#pragma once

// T5's span-corruption objective (Raffel et al. 2020; t5.data.preprocessors
// random_spans_noise_mask, noise_span_to_unique_sentinel, random_spans_helper),
// computed as T5 computes it:
//   - of `length` tokens, round(length * density) are noise (at least 1, at
//     most length - 1), in round(noise / mean_span) spans (at least 1); both
//     roundings in float32 and half to even, as tf.round on T5's float32
//     casts (Hugging Face's flax script rounds in float64 and can differ by
//     one token: 190 x 0.15 is 28.5 there, 28.500002 here, 29 noise tokens);
//   - the noise tokens are cut into that many non-empty spans, and the
//     non-noise tokens likewise, each cut uniformly at random (a shuffle of
//     the segment starts, T5's _random_segmentation); the sequence alternates
//     non-noise, noise, ..., so it starts clean and ends in noise;
//   - inputs: each noise span replaced by one sentinel, counting down from
//     the top of the vocabulary (span i: vocab_size - 1 - i, T5's
//     <extra_id_i>); targets: the same with the mask inverted (each clean
//     span replaced), i.e. each dropped span preceded by its sentinel; then
//     EOS appended to both.
// The shuffles draw from recast's seeded permutation (train/data.h), not
// TensorFlow's generator: the same distribution, not the same draws.

#include "recast/train/data.h"

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace recast::train {

struct SpanCorruptionOptions {
  double noise_density = 0.15;
  double mean_span = 3.0;
};

// How T5 splits `length` tokens (length >= 2; T5 raises shorter ones to 2).
struct SpanCounts {
  int64_t noise = 0, spans = 0;
};
SpanCounts span_counts(int64_t length, const SpanCorruptionOptions& o);

// The noise mask for `length` tokens, deterministic in `seed`.
std::vector<bool> random_spans_noise_mask(int64_t length, const SpanCorruptionOptions& o, uint64_t seed);

struct CorruptedSpans {
  std::vector<int64_t> inputs, targets;
};
// `tokens` with `noise` (one flag per token) corrupted: sentinels from
// vocab_size - 1 down; eos_id appended to both unless it is negative.
CorruptedSpans corrupt_spans(const std::vector<int64_t>& tokens, const std::vector<bool>& noise,
                             int64_t vocab_size, int64_t eos_id);

// T5's random_spans_helper: the raw length to draw so that the corrupted
// inputs fill `inputs_length` exactly (EOS included), and the targets'
// length then (512 -> 568 raw tokens, 114 targets at the defaults).
std::pair<int64_t, int64_t> span_corruption_lengths(int64_t inputs_length, const SpanCorruptionOptions& o);

// The text split of `options` as span-corruption examples for an
// encoder-decoder: the token stream (text_split_tokens) cut into windows of
// the raw length random_spans_helper gives for options.seq_len encoder
// tokens, each corrupted with sentinels from the tokenizer's top id down
// (the tokenizer must spell them <extra_id_N> there: T5's SentencePiece
// models, or the byte tokenizer recast builds for encoder-decoders).
// Example: input_ids [B, inputs], decoder_input_ids = [decoder_start,
// targets[:-1]], labels = targets [B, targets]. A window's noise mask is a
// function of the split seed and the window's index alone, so an epoch, a
// resumed run and an evaluation see the same corruption of the same text.
std::unique_ptr<Dataset> open_span_corruption(const std::string& name,
                                              const std::vector<io::Document>& docs,
                                              const DataOptions& options,
                                              const io::Tokenizer& tokenizer);

}  // namespace recast::train
