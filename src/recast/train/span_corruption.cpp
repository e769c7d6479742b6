#include "recast/train/span_corruption.h"

#include "recast/core/error.h"
#include "recast/train/data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

namespace recast::train {
namespace {

// tf.round(float32): half to even, on float32 arithmetic.
int64_t round_f32(float x) { return static_cast<int64_t>(std::nearbyint(x)); }

void check(const SpanCorruptionOptions& o) {
  RECAST_CHECK(o.noise_density > 0 && o.noise_density < 1, "--noise-density: expected a value in (0, 1), found ",
               o.noise_density);
  RECAST_CHECK(o.mean_span >= 1 && o.mean_span <= 1e6, "--mean-span: expected a value >= 1, found ", o.mean_span);
}

// T5's _random_segmentation: `items` cut into `segments` non-empty runs, the
// cuts a uniformly random choice of segments - 1 of the items - 1 gaps.
std::vector<int64_t> random_segmentation(int64_t items, int64_t segments, uint64_t seed) {
  std::vector<bool> first(static_cast<size_t>(items), false);
  const std::vector<int64_t> order = permutation(items - 1, seed);
  for (int64_t i = 0; i < segments - 1; ++i) first[static_cast<size_t>(order[static_cast<size_t>(i)] + 1)] = true;
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < items; ++i) {
    if (i == 0 || first[static_cast<size_t>(i)]) lengths.push_back(0);
    ++lengths.back();
  }
  return lengths;
}

}  // namespace

SpanCounts span_counts(int64_t length, const SpanCorruptionOptions& o) {
  check(o);
  RECAST_CHECK(length >= 2, "span corruption: ", length, " tokens (at least 2)");
  SpanCounts c;
  c.noise = round_f32(static_cast<float>(length) * static_cast<float>(o.noise_density));
  c.noise = std::min(std::max<int64_t>(c.noise, 1), length - 1);
  c.spans = std::max<int64_t>(round_f32(static_cast<float>(c.noise) / static_cast<float>(o.mean_span)), 1);
  return c;
}

std::vector<bool> random_spans_noise_mask(int64_t length, const SpanCorruptionOptions& o, uint64_t seed) {
  RECAST_CHECK(length >= 0, "span corruption: a negative length");
  const int64_t n = std::max<int64_t>(length, 2);
  const SpanCounts c = span_counts(n, o);
  RECAST_CHECK(c.spans <= n - c.noise, "span corruption: ", n, " tokens at noise density ", o.noise_density,
               " and mean span ", o.mean_span, " give ", c.spans, " spans but only ", n - c.noise,
               " clean tokens to separate them");
  // Two independent shuffles (T5 takes two seeds).
  const std::vector<int64_t> noise = random_segmentation(c.noise, c.spans, seed * 2 + 1);
  const std::vector<int64_t> clean = random_segmentation(n - c.noise, c.spans, seed * 2 + 2);
  std::vector<bool> mask;
  mask.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < c.spans; ++i) {
    mask.insert(mask.end(), static_cast<size_t>(clean[static_cast<size_t>(i)]), false);
    mask.insert(mask.end(), static_cast<size_t>(noise[static_cast<size_t>(i)]), true);
  }
  mask.resize(static_cast<size_t>(length));
  return mask;
}

namespace {

// T5's noise_span_to_unique_sentinel: each run of `drop` becomes one
// sentinel, vocab_size - 1 for the first run, counting down.
std::vector<int64_t> to_sentinels(const std::vector<int64_t>& tokens, const std::vector<bool>& drop,
                                  int64_t vocab_size) {
  std::vector<int64_t> out;
  int64_t sentinel = vocab_size - 1;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!drop[i]) {
      out.push_back(tokens[i]);
    } else if (i == 0 || !drop[i - 1]) {
      out.push_back(sentinel--);
    }
  }
  return out;
}

}  // namespace

CorruptedSpans corrupt_spans(const std::vector<int64_t>& tokens, const std::vector<bool>& noise,
                             int64_t vocab_size, int64_t eos_id) {
  RECAST_CHECK(tokens.size() == noise.size(), "span corruption: ", tokens.size(), " tokens but ", noise.size(),
               " mask flags");
  std::vector<bool> clean(noise.size());
  int64_t spans = 0;
  for (size_t i = 0; i < noise.size(); ++i) {
    clean[i] = !noise[i];
    spans += noise[i] && (i == 0 || !noise[i - 1]);
  }
  RECAST_CHECK(spans < vocab_size, "span corruption: ", spans, " spans need as many sentinels, the vocabulary has ",
               vocab_size, " ids");
  CorruptedSpans c{to_sentinels(tokens, noise, vocab_size), to_sentinels(tokens, clean, vocab_size)};
  if (eos_id >= 0) {
    c.inputs.push_back(eos_id);
    c.targets.push_back(eos_id);
  }
  return c;
}

std::pair<int64_t, int64_t> span_corruption_lengths(int64_t inputs_length, const SpanCorruptionOptions& o) {
  check(o);
  RECAST_CHECK(inputs_length >= 3 && inputs_length <= (int64_t{1} << 30),
               "span corruption: inputs length ", inputs_length, " out of range [3, 2^30]");
  // T5's helper rounds with Python's round (float64, half to even).
  auto lengths = [&](int64_t tokens) {
    const auto noise = static_cast<int64_t>(std::nearbyint(static_cast<double>(tokens) * o.noise_density));
    const auto spans = static_cast<int64_t>(std::nearbyint(static_cast<double>(noise) / o.mean_span));
    return std::make_pair(tokens - noise + spans + 1, noise + spans + 1);
  };
  int64_t tokens = inputs_length - 1;
  while (lengths(tokens + 1).first <= inputs_length) ++tokens;
  auto [inputs, targets] = lengths(tokens);
  if (o.noise_density == 0.5 && targets > inputs) {
    --tokens;
    --targets;
  }
  return {tokens, targets};
}

namespace {

class SpanCorruptionDataset : public Dataset {
 public:
  SpanCorruptionDataset(const std::string& name, const std::vector<io::Document>& docs,
                        const DataOptions& o, const io::Tokenizer& tok)
      : options_{o.noise_density, o.mean_span}, vocab_(tok.vocab_size()), eos_(tok.eos_id()),
        start_(o.decoder_start) {
    raw_ = span_corruption_lengths(o.seq_len, options_).first;
    const SpanCounts c = span_counts(raw_, options_);
    inputs_ = raw_ - c.noise + c.spans + (eos_ >= 0 ? 1 : 0);
    targets_ = c.noise + c.spans + (eos_ >= 0 ? 1 : 0);
    // The sentinels must be the tokenizer's own top ids.
    for (int64_t i = 0; i < c.spans; ++i) {
      const int64_t id = vocab_ - 1 - i;
      if (id < 0 || !tok.is_special(id) || tok.decode({id}) != msg("<extra_id_", i, ">")) {
        throw Error(msg("span corruption: ", c.spans, " spans per example need the sentinels <extra_id_0> .. <extra_id_",
                        c.spans - 1, "> at the top of the vocabulary; the ", tok.kind(),
                        " tokenizer has ", id >= 0 ? quote(tok.decode({id})) : std::string("nothing"),
                        " at id ", id));
      }
    }
    RECAST_CHECK(start_ >= 0 && start_ < vocab_, "span corruption: decoder start token ", start_,
                 " is outside the vocabulary [0, ", vocab_, ")");
    TextTokens text = text_split_tokens(docs, o, tok);
    tokens_ = std::move(text.tokens);
    windows_ = static_cast<int64_t>(tokens_.size()) / raw_;
    if (windows_ == 0) {
      throw Error(msg("data ", quote(name), " (", o.split, "): empty data set (", tokens_.size(),
                      " tokens, fewer than the ", raw_, " one example of --seq-len ", o.seq_len,
                      " corrupts)"));
    }
    // Seeds differ by split so that no two splits share masks.
    seed_ = o.seed * 1000003 + std::hash<std::string>{}(o.split);
    byte_len_.resize(static_cast<size_t>(vocab_));
    for (int64_t id = 0; id < vocab_; ++id) {
      byte_len_[static_cast<size_t>(id)] =
          tok.is_special(id) ? 0 : static_cast<int32_t>(tok.decode({id}).size());
    }
    describe_ = msg(name, " (", o.split, "): ", windows_,
                    " span-corruption examples (", raw_, " tokens -> ", inputs_, " inputs, ", targets_,
                    " targets; noise density ", options_.noise_density, ", mean span ",
                    options_.mean_span, "; ", text.documents, " documents, ", tok.kind(), " tokenizer)");
  }

  DataKind kind() const override { return DataKind::Text; }
  int64_t size() const override { return windows_; }
  std::string describe() const override { return describe_; }

  Example batch(const std::vector<int64_t>& indices) const override {
    const auto b = static_cast<int64_t>(indices.size());
    at::Tensor x = at::empty({b, inputs_}, at::kLong), y = at::empty({b, targets_}, at::kLong);
    Example ex;
    for (int64_t r = 0; r < b; ++r) {
      const int64_t w = indices[static_cast<size_t>(r)];
      RECAST_CHECK(w >= 0 && w < windows_, "example ", w, " out of range [0, ", windows_, ")");
      const std::vector<int64_t> raw(tokens_.begin() + w * raw_, tokens_.begin() + (w + 1) * raw_);
      const CorruptedSpans c =
          corrupt_spans(raw, random_spans_noise_mask(raw_, options_, seed_ + static_cast<uint64_t>(w)),
                        vocab_, eos_);
      RECAST_CHECK(static_cast<int64_t>(c.inputs.size()) == inputs_ &&
                       static_cast<int64_t>(c.targets.size()) == targets_,
                   "span corruption: lengths ", c.inputs.size(), " / ", c.targets.size(), ", expected ",
                   inputs_, " / ", targets_);
      std::copy(c.inputs.begin(), c.inputs.end(), x.data_ptr<int64_t>() + r * inputs_);
      std::copy(c.targets.begin(), c.targets.end(), y.data_ptr<int64_t>() + r * targets_);
      for (const int64_t t : c.targets) ex.bytes += byte_len_[static_cast<size_t>(t)];
    }
    ex.inputs.input_ids = x;
    at::Tensor dec = at::empty_like(y);
    dec.select(1, 0).fill_(start_);
    dec.narrow(1, 1, targets_ - 1).copy_(y.narrow(1, 0, targets_ - 1));
    ex.inputs.decoder_input_ids = dec;
    ex.labels = y;
    ex.tokens = b * targets_;
    return ex;
  }

 private:
  SpanCorruptionOptions options_;
  int64_t vocab_, eos_, start_, raw_ = 0, inputs_ = 0, targets_ = 0, windows_ = 0;
  uint64_t seed_ = 0;
  std::vector<int32_t> tokens_, byte_len_;
  std::string describe_;
};

}  // namespace

std::unique_ptr<Dataset> open_span_corruption(const std::string& name,
                                              const std::vector<io::Document>& docs,
                                              const DataOptions& options,
                                              const io::Tokenizer& tokenizer) {
  return std::make_unique<SpanCorruptionDataset>(name, docs, options, tokenizer);
}

}  // namespace recast::train
