// core/: errors, registry and catalog, logging levels, progress bar, device and
// dtype selection.

#include "recast/core/catalog.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/core/registry.h"
#include "recast/core/torch_compat.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

namespace recast {
namespace {

TEST(Error, MessagesAreOneLineWithContext) {
  Error e("first\nsecond");
  EXPECT_STREQ(e.what(), "first; second");
  EXPECT_STREQ(e.with_context("file.safetensors").what(), "file.safetensors: first; second");
  EXPECT_EQ(quote(std::string("a\nb\x01", 4)), "'a\\x0ab\\x01'");
  EXPECT_EQ(msg("x=", 3, ", y=", 1.5), "x=3, y=1.5");
  try {
    RECAST_CHECK(1 + 1 == 3, "arithmetic: expected ", 3, ", found ", 2);
    FAIL();
  } catch (const Error& err) {
    EXPECT_STREQ(err.what(), "arithmetic: expected 3, found 2");
  }
}

TEST(Registry, UnknownNamesListTheKnownOnesAndEntriesReachTheCatalog) {
  Registry<std::function<int()>> registry("test-widget");
  registry.add("beta", "the second", [] { return 2; });
  registry.add("alpha", "the first", [] { return 1; });
  EXPECT_EQ(registry.get("alpha").factory(), 1);
  EXPECT_THROW(registry.add("alpha", "again", [] { return 3; }), Error);
  try {
    registry.get("gamma");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "unknown test-widget 'gamma' (known: alpha, beta)");
  }
  auto entries = catalog().at("test-widget");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "alpha");
  EXPECT_EQ(entries[1].summary, "the second");
}

TEST(Log, LevelsParseAndFilter) {
  EXPECT_EQ(log::parse_level("debug"), log::Level::Debug);
  EXPECT_EQ(log::parse_level("warning"), log::Level::Warn);
  EXPECT_THROW(log::parse_level("loud"), UsageError);
  auto saved = log::level();
  log::set_level(log::Level::Warn);
  EXPECT_FALSE(log::enabled(log::Level::Info));
  EXPECT_TRUE(log::enabled(log::Level::Error));
  log::set_level(log::Level::Off);
  EXPECT_FALSE(log::enabled(log::Level::Error));
  log::set_level(saved);
}

std::string captured(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  return out;
}

TEST(ProgressBar, RendersRateEtaAndMetrics) {
  FILE* sink = std::tmpfile();
  ProgressBar::Options options{"train", "step", sink, /*tty=*/0};
  ProgressBar bar(100, options);
  auto t0 = ProgressBar::Clock::now();
  bar.set_clock_for_testing(t0);
  bar.update_at(t0 + std::chrono::seconds(5), 25, {{"loss", 2.5}});
  std::string line = bar.render(t0 + std::chrono::seconds(5));
  EXPECT_NE(line.find("train"), std::string::npos) << line;
  EXPECT_NE(line.find(" 25%"), std::string::npos) << line;
  EXPECT_NE(line.find("25/100"), std::string::npos) << line;
  EXPECT_NE(line.find("5 step/s"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA 00:15"), std::string::npos) << line;
  EXPECT_NE(line.find("loss=2.5"), std::string::npos) << line;
  bar.finish();
  std::fclose(sink);
}

TEST(ProgressBar, PlainModePrintsPeriodicLinesWithoutControlCodes) {
  FILE* sink = std::tmpfile();
  ProgressBar::Options options{"work", "it", sink, /*tty=*/0};
  options.plain_interval = 10;
  {
    ProgressBar bar(1000, options);
    auto t0 = ProgressBar::Clock::now();
    bar.set_clock_for_testing(t0);
    for (int s = 1; s <= 30; ++s) bar.update_at(t0 + std::chrono::seconds(s), 10, {});
  }
  std::string out = captured(sink);
  std::fclose(sink);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_EQ(out.find('\033'), std::string::npos);
  int lines = static_cast<int>(std::count(out.begin(), out.end(), '\n'));
  EXPECT_EQ(lines, 4) << out;  // at 10 s, 20 s, 30 s, and the final line
}

TEST(ProgressBar, TerminalModeRedrawsOneLine) {
  FILE* sink = std::tmpfile();
  ProgressBar::Options options{"tty", "it", sink, /*tty=*/1};
  {
    ProgressBar bar(10, options);
    auto t0 = ProgressBar::Clock::now();
    bar.set_clock_for_testing(t0);
    for (int s = 1; s <= 10; ++s) bar.update_at(t0 + std::chrono::seconds(s), 1, {});
  }
  std::string out = captured(sink);
  std::fclose(sink);
  EXPECT_NE(out.find("\r\033[K"), std::string::npos);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  EXPECT_NE(out.find("took"), std::string::npos) << out;
}

TEST(ProgressBar, FormatsDurations) {
  EXPECT_EQ(ProgressBar::format_duration(0), "00:00");
  EXPECT_EQ(ProgressBar::format_duration(75), "01:15");
  EXPECT_EQ(ProgressBar::format_duration(3725), "1:02:05");
  EXPECT_EQ(ProgressBar::format_duration(NAN), "--:--");
}

TEST(Device, SelectionAndDtypes) {
  EXPECT_EQ(select_device("cpu"), c10::Device(c10::kCPU));
  EXPECT_EQ(select_device("auto").type(), cuda_available() ? c10::kCUDA : c10::kCPU);
  EXPECT_THROW(select_device("tpu"), UsageError);
  EXPECT_THROW(select_device("cuda:x"), UsageError);
  if (!cuda_available()) {
    try {
      select_device("cuda");
      FAIL();
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos);
    }
  }
  EXPECT_EQ(parse_dtype("f32"), c10::kFloat);
  EXPECT_EQ(parse_dtype("bf16"), c10::kBFloat16);
  EXPECT_EQ(parse_dtype("f16"), c10::kHalf);
  EXPECT_THROW(parse_dtype("int4"), UsageError);
  EXPECT_EQ(dtype_flag_name(c10::kBFloat16), "bf16");
}

TEST(TorchCompat, VersionMacrosAgreeWithTheHeaders) {
  EXPECT_EQ(RECAST_TORCH_AT_LEAST(compat::kTorchMajor, compat::kTorchMinor), 1);
  EXPECT_EQ(RECAST_TORCH_AT_LEAST(compat::kTorchMajor + 1, 0), 0);
  EXPECT_EQ(RECAST_HAS_SDPA, compat::kTorchMajor >= 2 ? 1 : 0);
}

}  // namespace
}  // namespace recast
