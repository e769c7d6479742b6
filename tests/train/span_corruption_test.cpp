// T5's span corruption: a worked example of the sentinels, the counts as T5
// rounds them (float32, half to even), random_spans_helper's 512 -> 568 / 114,
// and the masks' statistics over many seeds (exact counts per draw, spans
// non-empty, clean first and noise last, every position but the first noise
// at about the density).

#include "recast/train/span_corruption.h"
#include "recast/core/error.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <vector>

namespace recast::testing {
namespace {

using train::SpanCorruptionOptions;

TEST(SpanCorruption, AWorkedExample) {
  // Tokens 1..8, noise on 3 4 and 8, a vocabulary of 100 with EOS 1:
  // spans become <extra_id_0> = 99 and <extra_id_1> = 98.
  const std::vector<int64_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<bool> noise = {false, false, true, true, false, false, false, true};
  const train::CorruptedSpans c = train::corrupt_spans(tokens, noise, 100, 1);
  EXPECT_EQ(c.inputs, (std::vector<int64_t>{1, 2, 99, 5, 6, 7, 98, 1}));
  EXPECT_EQ(c.targets, (std::vector<int64_t>{99, 3, 4, 98, 8, 1}));
  // No EOS when it is negative; the mask must fit the tokens.
  EXPECT_EQ(train::corrupt_spans(tokens, noise, 100, -1).inputs.size(), 7u);
  EXPECT_THROW(train::corrupt_spans(tokens, std::vector<bool>(3), 100, 1), Error);
  EXPECT_THROW(train::corrupt_spans(tokens, noise, 2, 1), Error);  // 2 spans, 2 ids
}

TEST(SpanCorruption, CountsRoundAsT5Does) {
  const SpanCorruptionOptions o;
  // 568 x 0.15 = 85.2 -> 85 noise tokens in round(28.33) = 28 spans.
  EXPECT_EQ(train::span_counts(568, o).noise, 85);
  EXPECT_EQ(train::span_counts(568, o).spans, 28);
  // float32: 190 x 0.15f = 28.500002 -> 29 (in float64 it is 28.5 -> 28);
  // 30 x 0.15f = 4.5 in both -> 4.
  EXPECT_EQ(train::span_counts(190, o).noise, 29);
  EXPECT_EQ(train::span_counts(30, o).noise, 4);
  // Half to even: 10 x 0.25 = 2.5 -> 2; 14 x 0.25 = 3.5 -> 4.
  EXPECT_EQ(train::span_counts(10, {0.25, 3.0}).noise, 2);
  EXPECT_EQ(train::span_counts(14, {0.25, 3.0}).noise, 4);
  // At least one noise token and one span; at most length - 1 noise tokens.
  EXPECT_EQ(train::span_counts(2, o).noise, 1);
  EXPECT_EQ(train::span_counts(2, o).spans, 1);
  EXPECT_EQ(train::span_counts(3, {0.99, 1.0}).noise, 2);
  // T5's helper: 512 input positions take 568 raw tokens, 114 targets.
  EXPECT_EQ(train::span_corruption_lengths(512, o), std::make_pair(int64_t{568}, int64_t{114}));
  const std::vector<bool> mask = train::random_spans_noise_mask(568, o, 7);
  std::vector<int64_t> tokens(568);
  std::iota(tokens.begin(), tokens.end(), 2);
  const train::CorruptedSpans c = train::corrupt_spans(tokens, mask, 32100, 1);
  EXPECT_EQ(c.inputs.size(), 512u);
  EXPECT_EQ(c.targets.size(), 114u);
  // Bad options and lengths are refused, naming what is wrong.
  EXPECT_THROW(train::span_counts(1, o), Error);
  EXPECT_THROW(train::span_counts(100, {1.5, 3.0}), Error);
  EXPECT_THROW(train::span_counts(100, {0.15, 0.5}), Error);
  EXPECT_THROW(train::random_spans_noise_mask(10, {0.9, 1.0}, 0), Error);  // 9 spans, 1 clean token
}

TEST(SpanCorruption, MasksHaveT5sShapeAndStatistics) {
  const SpanCorruptionOptions o;
  const int64_t n = 568, draws = 2000;
  std::vector<int64_t> noise_at(n, 0);
  std::set<std::vector<bool>> distinct;
  double span_sum = 0;
  int64_t span_count = 0;
  for (int64_t seed = 0; seed < draws; ++seed) {
    const std::vector<bool> m = train::random_spans_noise_mask(n, o, static_cast<uint64_t>(seed));
    ASSERT_EQ(m.size(), static_cast<size_t>(n));
    EXPECT_FALSE(m.front());
    EXPECT_TRUE(m.back());
    int64_t noise = 0, spans = 0, run = 0;
    for (int64_t i = 0; i < n; ++i) {
      noise += m[i];
      noise_at[i] += m[i];
      if (m[i]) {
        ++run;
        if (i == 0 || !m[i - 1]) ++spans;
      }
      if (run > 0 && (!m[i] || i == n - 1)) {
        span_sum += static_cast<double>(run);
        ++span_count;
        run = 0;
      }
    }
    EXPECT_EQ(noise, 85);
    EXPECT_EQ(spans, 28);
    if (seed < 50) distinct.insert(m);
  }
  EXPECT_EQ(distinct.size(), 50u);  // seeds give different masks ...
  EXPECT_EQ(train::random_spans_noise_mask(n, o, 3), train::random_spans_noise_mask(n, o, 3));  // ... the same one each
  EXPECT_NEAR(span_sum / static_cast<double>(span_count), 85.0 / 28.0, 1e-9);
  // Position 0 is never noise; in the middle of the sequence each position
  // is noise at about the density (2000 draws: binomial sd ~0.008; near the
  // ends, where the first span is clean and the last noise, it is not).
  EXPECT_EQ(noise_at[0], 0);
  double worst = 0;
  for (int64_t i = n / 4; i < 3 * n / 4; ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(noise_at[i]) / draws - 85.0 / 568.0));
  }
  EXPECT_LT(worst, 0.05);
  // A short sequence is padded to 2 and cut back, as T5 does.
  EXPECT_EQ(train::random_spans_noise_mask(1, o, 0), std::vector<bool>{false});
}

}  // namespace
}  // namespace recast::testing
