// Image corruptions for robustness evaluation: every corruption at every
// severity keeps shape and range, is reproducible from its seed, changes the
// image more as the severity grows (on average over a batch), and bad specs
// are usage errors naming what was wrong.

#include "recast/core/error.h"
#include "recast/eval/corruptions.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

at::Tensor smooth_images(int64_t channels) {
  // Smooth structure plus edges, in [0.1, 0.9]: blur and pixelation change it.
  torch::manual_seed(5);
  at::Tensor x = torch::rand({8, channels, 28, 28});
  x = at::avg_pool2d(x, 3, 1, 1);
  x.narrow(3, 10, 4).fill_(0.9);
  return x.clamp(0.1, 0.9);
}

TEST(Corruptions, EveryOneKeepsShapeAndRangeIsSeededAndGrowsWithSeverity) {
  for (int64_t channels : {1, 3}) {
    const at::Tensor x = smooth_images(channels);
    for (const auto& name : eval::corruption_names()) {
      double previous = 0;
      for (int s = 1; s <= 5; ++s) {
        const eval::Corruption c{name, s};
        const at::Tensor y = eval::corrupt(x, c, 11);
        ASSERT_EQ(y.sizes(), x.sizes()) << name << " " << s;
        EXPECT_GE(y.min().item<double>(), 0.0) << name;
        EXPECT_LE(y.max().item<double>(), 1.0) << name;
        EXPECT_TRUE(torch::equal(y, eval::corrupt(x, c, 11))) << name << ": same seed, same result";
        const double change = (y - x).abs().mean().item<double>();
        EXPECT_GT(change, 0.0) << name << " " << s;
        // Monotone in severity (CIFAR-10-C's defocus alias sigma is not, so
        // allow its small dip; jpeg's quality steps are coarse).
        EXPECT_GE(change, previous * 0.8) << name << " severity " << s << " channels " << channels;
        previous = change;
      }
    }
  }
}

TEST(Corruptions, NoiseDependsOnTheSeed) {
  const at::Tensor x = smooth_images(1);
  for (const char* name : {"gaussian_noise", "shot_noise", "impulse_noise"}) {
    EXPECT_FALSE(torch::equal(eval::corrupt(x, {name, 3}, 1), eval::corrupt(x, {name, 3}, 2))) << name;
  }
}

TEST(Corruptions, ContrastAndBrightnessDoWhatTheySay) {
  const at::Tensor x = smooth_images(3);
  const at::Tensor lo = eval::corrupt(x, {"contrast", 5}, 0);
  EXPECT_LT(lo.std().item<double>(), 0.25 * x.std().item<double>());
  EXPECT_NEAR(lo.mean().item<double>(), x.mean().item<double>(), 1e-5);
  const at::Tensor hi = eval::corrupt(x, {"brightness", 2}, 0);
  // HSV value (the channel max) goes up by 0.1, hue kept: channel ratios stay.
  const at::Tensor v = std::get<0>(x.max(1)), v2 = std::get<0>(hi.max(1));
  EXPECT_TRUE(torch::allclose(v2, (v + 0.1).clamp(0, 1), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(hi.select(1, 0) / hi.select(1, 1), x.select(1, 0) / x.select(1, 1), 1e-4, 1e-4));
}

TEST(Corruptions, SpecsParseAndBadOnesAreNamed) {
  EXPECT_EQ(eval::parse_corruptions("all").size(), eval::corruption_names().size() * 5);
  const auto two = eval::parse_corruptions("jpeg:2,contrast");
  ASSERT_EQ(two.size(), 6u);
  EXPECT_EQ(two[0].name, "jpeg");
  EXPECT_EQ(two[0].severity, 2);
  EXPECT_EQ(two[5].severity, 5);
  for (const char* bad : {"fog", "jpeg:6", "jpeg:0", "jpeg:x", ""}) {
    try {
      eval::parse_corruptions(bad);
      FAIL() << bad;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--corrupt"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace recast::testing
