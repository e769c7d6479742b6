// recast plot: reading metrics.jsonl, the axes, the figure and its PNG / SVG, and the verb as users
// meet it (run in-process through run_cli, so this binary needs no LibTorch).

#include "recast/cli/plot.h"
#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace recast::testing {
namespace {

using cli::MetricRecord;
using cli::parse_metrics_jsonl;
using cli::PlotOptions;
namespace pd = cli::plot_detail;

const char* const kGood =
    R"({"step": 0, "split": "train", "loss": 2.5, "lr": 0.0001, "elapsed_s": 0.1, "note": "warmup"})"
    "\n"
    R"({"step": 10, "split": "train", "loss": 2.3, "lr": 0.0002, "grad_norm": 0.9})"
    "\n"
    "\n"  // blank lines are skipped, and still counted
    R"({"step": 20, "split": "train", "loss": null, "lr": 0.0003})"
    "\n"
    R"({"step": 20, "split": "eval", "loss": 2.1, "perplexity": 8.2})"
    "\n"
    R"({"step": 30, "split": "train", "loss": 2.0, "lr": 0.0003})"
    "\n"
    R"({"step": 40, "split": "eval", "loss": 1.9, "perplexity": 6.7, "accuracy": true})"
    "\n";

// One metrics.jsonl line.
std::string line(const char* json) {
  return std::string(json) + "\n";
}

std::vector<MetricRecord> parse(const std::string& text) {
  return parse_metrics_jsonl(text, "m.jsonl");
}

using draw::Figure;
using draw::Item;

// The panels of a figure: the groups of its items, in order.
std::vector<std::string> panels(const Figure& f) {
  std::vector<std::string> out;
  for (const Item& it : f.items()) {
    if (!it.group.empty() && std::find(out.begin(), out.end(), it.group) == out.end())
      out.push_back(it.group);
  }
  return out;
}

struct Polyline {
  std::string split;
  size_t points = 0;
};

std::vector<Polyline> polylines(const Figure& f, const std::string& metric = "") {
  std::vector<Polyline> out;
  for (const Item* it : f.find(metric, "series")) out.push_back({it->key, it->points.size()});
  return out;
}

// The points of the first series line of a panel.
std::vector<draw::Point> points_of(const Figure& f, const std::string& metric = "") {
  auto lines = f.find(metric, "series");
  return lines.empty() ? std::vector<draw::Point>{} : lines[0]->points;
}

// The texts of a panel (all of them, or of one role).
std::vector<std::string> texts(const Figure& f, const std::string& metric,
                               const std::string& role = "") {
  std::vector<std::string> out;
  for (const Item* it : f.find(metric, role)) {
    if (it->kind == Item::Kind::text) out.push_back(it->text);
  }
  return out;
}

bool has_text(const Figure& f, const std::string& metric, const std::string& text,
              const std::string& role = "") {
  auto t = texts(f, metric, role);
  return std::find(t.begin(), t.end(), text) != t.end();
}

const Item& frame(const Figure& f, const std::string& metric) {
  auto frames = f.find(metric, "frame");
  EXPECT_EQ(frames.size(), 1u) << metric;
  return *frames.at(0);
}

Figure figure_of(const std::string& text, std::vector<std::string> metrics = {}, bool log_y = false) {
  return cli::metrics_figure(parse_metrics_jsonl(text, "m.jsonl"), {"m.jsonl", std::move(metrics), log_y});
}

// --- reading ----------------------------------------------------------------

TEST(PlotRead, GoodFile) {
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"), kGood);
  auto records = cli::read_metrics_jsonl(dir.file("metrics.jsonl"));
  ASSERT_EQ(records.size(), 6u);
  EXPECT_EQ(records[0].line, 1u);
  EXPECT_EQ(records[2].line, 4u);  // after the blank line
  EXPECT_EQ(records[0].split, "train");
  EXPECT_EQ(records[3].split, "eval");
  EXPECT_EQ(records[3].step, 20);
  // elapsed_s and strings are not metrics; null is a non-finite point.
  ASSERT_EQ(records[0].values.size(), 2u);
  EXPECT_EQ(records[0].values[0].first, "loss");
  EXPECT_EQ(records[0].values[1].first, "lr");
  EXPECT_DOUBLE_EQ(records[0].values[1].second, 0.0001);
  ASSERT_EQ(records[2].values[0].first, "loss");
  EXPECT_TRUE(std::isnan(records[2].values[0].second));
  EXPECT_EQ(records[5].values.size(), 2u);  // "accuracy": true is not a number

  std::vector<std::string> names = cli::metric_names(records);
  EXPECT_EQ(names, (std::vector<std::string>{"loss", "lr", "grad_norm", "perplexity"}));
}

TEST(PlotRead, LossFirstEvenWhenItComesLater) {
  auto records = parse(line(R"({"step": 1, "split": "train", "lr": 1, "loss": 2})"));
  EXPECT_EQ(cli::metric_names(records), (std::vector<std::string>{"loss", "lr"}));
}

TEST(PlotRead, CrlfAndPythonNonFiniteTokens) {
  auto records = parse(
      "{\"step\": 1, \"split\": \"train\", \"loss\": NaN, \"lr\": Infinity, "
      "\"x\": -Infinity, \"tag\": \"NaN Infinity\"}\r\n");
  ASSERT_EQ(records.size(), 1u);
  ASSERT_EQ(records[0].values.size(), 3u);
  for (const auto& kv : records[0].values) EXPECT_TRUE(std::isnan(kv.second)) << kv.first;
}

TEST(PlotRead, MalformedLinesNameTheLine) {
  const std::string ok = line(R"({"step": 1, "split": "train", "loss": 1})");
  EXPECT_EQ(error_of([&] { parse(ok + ok + "[1, 2]\n"); }),
            "m.jsonl:3: not a JSON object (found array)");
  EXPECT_EQ(error_of([&] { parse(ok + "\n\n" + "42\n"); }),
            "m.jsonl:4: not a JSON object (found non-negative integer)");
  EXPECT_EQ(error_of([&] {
              parse(ok + "{\"step\": 1, \"split\": \"train\", \"loss\": }\n");
            }).rfind("m.jsonl:2: invalid JSON", 0),
            0u);
  EXPECT_EQ(error_of([&] { parse(line(R"({"split": "train", "loss": 1})")); }),
            "m.jsonl:1: no 'step'");
  EXPECT_EQ(error_of([&] { parse(line(R"({"step": "7", "split": "train"})")); }),
            "m.jsonl:1: 'step' is a string, expected a number");
  EXPECT_EQ(error_of([&] { parse(line(R"({"step": 7, "loss": 1})")); }), "m.jsonl:1: no 'split'");
  EXPECT_EQ(error_of([&] { parse(line(R"({"step": 7, "split": 3})")); }),
            "m.jsonl:1: 'split' is a non-negative integer, expected a string");
  EXPECT_EQ(error_of([&] { parse(line(R"({"step": 7, "split": "a", "loss": 1, "loss": 2})")); }),
            "m.jsonl:1: duplicate JSON key 'loss'");
}

TEST(PlotRead, ErrorsAreOneLine) {
  std::string e = error_of([] { parse("{\"step\": 1,\n"); });
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_EQ(e.rfind("m.jsonl:1: invalid JSON", 0), 0u) << e;
  // The bytes a bad line holds are shown escaped, never raw.
  e = error_of([] { parse("\xff\xfe\x01{\n"); });
  for (unsigned char c : e) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << e;
  EXPECT_NE(e.find("\\xff"), std::string::npos) << e;
}

TEST(PlotRead, EmptyFile) {
  EXPECT_EQ(error_of([] { parse(""); }), "m.jsonl: no records");
  EXPECT_EQ(error_of([] { parse("\n  \n\t\n"); }), "m.jsonl: no records");
  TempDir dir;
  write_bytes(dir.file("empty.jsonl"), "");
  EXPECT_EQ(error_of([&] { cli::read_metrics_jsonl(dir.file("empty.jsonl")); }),
            dir.file("empty.jsonl") + ": no records");
}

TEST(PlotRead, MissingFileAndDirectory) {
  TempDir dir;
  std::string e = error_of([&] { cli::read_metrics_jsonl(dir.file("nope.jsonl")); });
  EXPECT_EQ(e.rfind(dir.file("nope.jsonl") + ": cannot open for reading", 0), 0u) << e;
  e = error_of([&] { cli::read_metrics_jsonl(dir.path()); });
  EXPECT_EQ(e, dir.path() + ": is a directory, expected a metrics.jsonl file");
}

TEST(PlotRead, IncompleteLastLineIsSkipped) {
  // The trainer may be in the middle of writing the last line.
  const std::string ok = line(R"({"step": 1, "split": "train", "loss": 1})");
  ::testing::internal::CaptureStderr();
  auto records = parse(ok + R"({"step": 2, "split": "tr)");
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(records.size(), 1u);
  EXPECT_NE(err.find("m.jsonl:2: last line is incomplete"), std::string::npos) << err;
  // ...but not when it ends with a newline, nor when it is the only line.
  EXPECT_EQ(error_of([&] {
              parse(ok + "{\"step\": 2, \"split\": \"tr\n");
            }).rfind("m.jsonl:2: invalid JSON", 0),
            0u);
  EXPECT_EQ(error_of([&] { parse(R"({"step": 2, "split": "tr)"); }).rfind("m.jsonl:1: invalid", 0),
            0u);
  // A complete JSON value that is no record is an error wherever it is.
  EXPECT_EQ(error_of([&] { parse(ok + "[1]"); }), "m.jsonl:2: not a JSON object (found array)");
}

// --- axes -------------------------------------------------------------------

TEST(PlotAxes, LinearTicksAreRoundNumbers) {
  pd::Axis a = pd::linear_axis(0, 1000);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"0", "200", "400", "600", "800", "1000"}));
  EXPECT_EQ(a.lo, 0);
  EXPECT_EQ(a.hi, 1000);

  a = pd::linear_axis(2.05, 2.31);  // the axis widens to tick boundaries
  EXPECT_EQ(a.labels, (std::vector<std::string>{"2", "2.1", "2.2", "2.3", "2.4"}));
  EXPECT_DOUBLE_EQ(a.lo, 2.0);
  EXPECT_DOUBLE_EQ(a.hi, 2.4);

  a = pd::linear_axis(0.00012, 0.0003);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"1e-4", "1.5e-4", "2e-4", "2.5e-4", "3e-4"}));

  a = pd::linear_axis(-0.35, 0.2);
  EXPECT_EQ(a.labels,
            (std::vector<std::string>{"-0.4", "-0.3", "-0.2", "-0.1", "0", "0.1", "0.2"}));

  // Steps are integers: no 0.5 ticks.
  a = pd::linear_axis(0, 3, 6, true);
  EXPECT_EQ(a.labels, (std::vector<std::string>{"0", "1", "2", "3"}));

  // A single value gets a range around it.
  a = pd::linear_axis(5, 5);
  EXPECT_LT(a.lo, 5);
  EXPECT_GT(a.hi, 5);
  a = pd::linear_axis(0, 0);
  EXPECT_LT(a.lo, 0);
  EXPECT_GT(a.hi, 0);

  // Every tick lies within [lo, hi], ascending, and the data within the axis.
  for (auto [lo, hi] : std::vector<std::pair<double, double>>{
           {0.3, 0.7}, {-1e6, 3e6}, {1e-9, 3e-9}, {12345, 12346}, {-5, -4.99}}) {
    a = pd::linear_axis(lo, hi);
    EXPECT_LE(a.lo, lo);
    EXPECT_GE(a.hi, hi);
    EXPECT_GE(a.ticks.size(), 3u) << lo << " " << hi;
    EXPECT_LE(a.ticks.size(), 8u) << lo << " " << hi;
    EXPECT_TRUE(std::is_sorted(a.ticks.begin(), a.ticks.end()));
    EXPECT_EQ(a.ticks.size(), a.labels.size());
  }
}

TEST(PlotAxes, LogTicks) {
  pd::Axis a = pd::log_axis(1.8, 5.9);  // within a decade
  EXPECT_EQ(a.labels, (std::vector<std::string>{"1", "2", "3", "5", "7", "10"}));
  a = pd::log_axis(2, 3);  // narrow: the linear ticks
  EXPECT_EQ(a.labels, (std::vector<std::string>{"2", "2.2", "2.4", "2.6", "2.8", "3"}));
  a = pd::log_axis(0.03, 4);  // two decades: 1, 2, 5
  EXPECT_EQ(a.labels,
            (std::vector<std::string>{"0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"}));
  a = pd::log_axis(1e-5, 1e3);  // wide: powers of ten
  EXPECT_EQ(a.labels, (std::vector<std::string>{"1e-5", "1e-4", "0.001", "0.01", "0.1", "1", "10",
                                                "100", "1000"}));
  a = pd::log_axis(1e-12, 1e12);  // very wide: every third power
  EXPECT_LE(a.ticks.size(), 9u);
  EXPECT_EQ(a.labels.front(), "1e-12");
  a = pd::log_axis(1, 1);
  EXPECT_LT(a.lo, 1);
  EXPECT_GT(a.hi, 1);
}

TEST(PlotAxes, FormatNumber) {
  EXPECT_EQ(pd::format_number(0), "0");
  EXPECT_EQ(pd::format_number(0.25), "0.25");
  EXPECT_EQ(pd::format_number(2000), "2000");
  EXPECT_EQ(pd::format_number(0.0003), "3e-4");
  EXPECT_EQ(pd::format_number(1.5e6), "1.5e6");
  EXPECT_EQ(pd::format_number(-2e-5), "-2e-5");
  EXPECT_EQ(pd::format_number(0.1 + 0.2), "0.3");
}

// --- the figure -------------------------------------------------------------

TEST(PlotFigure, OneLinePerSplitPerPanel) {
  const Figure f = figure_of(kGood);
  // Panels in order, loss first.
  EXPECT_EQ(panels(f), (std::vector<std::string>{"loss", "lr", "grad_norm", "perplexity"}));
  EXPECT_EQ(texts(f, "", "header"), (std::vector<std::string>{"m.jsonl (6 records)"}));

  // loss: train has 3 finite points (the null is skipped), eval 2.
  auto loss = polylines(f, "loss");
  ASSERT_EQ(loss.size(), 2u);
  EXPECT_EQ(loss[0].split, "train");
  EXPECT_EQ(loss[0].points, 3u);
  EXPECT_EQ(loss[1].split, "eval");
  EXPECT_EQ(loss[1].points, 2u);
  EXPECT_TRUE(has_text(f, "loss", "train", "legend text"));
  EXPECT_TRUE(has_text(f, "loss", "eval", "legend text"));
  EXPECT_EQ(f.find("loss", "markers").size(), 2u);  // short series get a dot per point

  // Metrics of one split draw one line and name only that split.
  auto lr = polylines(f, "lr");
  ASSERT_EQ(lr.size(), 1u);
  EXPECT_EQ(lr[0].split, "train");
  EXPECT_EQ(lr[0].points, 4u);
  EXPECT_FALSE(has_text(f, "lr", "eval"));
  auto ppl = polylines(f, "perplexity");
  ASSERT_EQ(ppl.size(), 1u);
  EXPECT_EQ(ppl[0].split, "eval");

  // A split keeps its colour in every panel, the legend's key included.
  const draw::Colour train = f.find("loss", "series", "train").at(0)->colour;
  const draw::Colour eval = f.find("loss", "series", "eval").at(0)->colour;
  EXPECT_FALSE(train == eval);
  EXPECT_TRUE(f.find("lr", "series", "train").at(0)->colour == train);
  EXPECT_TRUE(f.find("perplexity", "series", "eval").at(0)->colour == eval);
  EXPECT_TRUE(f.find("loss", "legend key", "eval").at(0)->colour == eval);

  // Tick labels: the shared step axis 0..40 and the loss axis; titles, labels.
  for (const char* label : {"0", "10", "20", "30", "40"}) EXPECT_TRUE(has_text(f, "loss", label, "tick")) << label;
  EXPECT_EQ(f.find("loss", "tick", "x").size(), 5u);
  for (const char* label : {"1.8", "2", "2.6"}) EXPECT_TRUE(has_text(f, "loss", label, "tick")) << label;
  EXPECT_TRUE(has_text(f, "loss", "step", "label"));
  EXPECT_EQ(texts(f, "perplexity", "title"), (std::vector<std::string>{"perplexity"}));
}

TEST(PlotFigure, PointsLieInsideThePlotArea) {
  const Figure f = figure_of(kGood, {"loss"});
  const Item& box = frame(f, "loss");
  EXPECT_GT(box.w, 100);
  EXPECT_GT(box.h, 100);
  for (const Item* line : f.find("loss", "series")) {
    for (const draw::Point& pt : line->points) {
      EXPECT_GE(pt.x, box.x - 0.05);
      EXPECT_LE(pt.x, box.x + box.w + 0.05);
      EXPECT_GE(pt.y, box.y - 0.05);
      EXPECT_LE(pt.y, box.y + box.h + 0.05);
    }
  }
  // Everything lies on the figure.
  for (const Item& it : f.items()) {
    EXPECT_GE(it.x, 0);
    EXPECT_LE(it.x + it.w, f.width());
    EXPECT_LE(it.y + it.h, f.height());
  }
}

TEST(PlotFigure, SelectedMetricsInOrder) {
  EXPECT_EQ(panels(figure_of(kGood, {"perplexity", "loss"})),
            (std::vector<std::string>{"perplexity", "loss"}));
}

TEST(PlotFigure, MissingMetric) {
  auto records = parse(line(R"({"step": 1, "split": "train", "loss": 1, "lr": 0.1})"));
  EXPECT_EQ(error_of([&] {
              cli::metrics_figure(records, {"metrics.jsonl", {"loss", "foo"}, false});
            }),
            "no metric 'foo' in metrics.jsonl (found: loss, lr)");
  auto bare = parse(line(R"({"step": 1, "split": "train", "elapsed_s": 3})"));
  EXPECT_EQ(error_of([&] {
              cli::metrics_figure(bare, {"metrics.jsonl", {}, false});
            }).rfind("metrics.jsonl: no metrics", 0),
            0u);
  EXPECT_EQ(error_of([&] {
              cli::metrics_figure({}, {"metrics.jsonl", {}, false});
            }),
            "metrics.jsonl: no records");
}

TEST(PlotFigure, LogScaleLeavesOutNonPositiveValues) {
  const Figure f = figure_of(line(R"({"step": 0, "split": "train", "loss": 10, "delta": -1})") +
                                 line(R"({"step": 1, "split": "train", "loss": 0, "delta": 0})") +
                                 line(R"({"step": 2, "split": "train", "loss": 1, "delta": -3})") +
                                 line(R"({"step": 3, "split": "train", "loss": -2, "delta": -2})") +
                                 line(R"({"step": 4, "split": "train", "loss": 0.1, "delta": -1})"),
                             {}, true);
  auto lines = polylines(f, "loss");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].points, 3u);  // 10, 1, 0.1
  EXPECT_EQ(texts(f, "loss", "title"), (std::vector<std::string>{"loss (log scale)"}));
  EXPECT_EQ(texts(f, "loss", "note"), (std::vector<std::string>{"2 values <= 0 not shown"}));
  for (const char* label : {"0.1", "1", "10"}) EXPECT_TRUE(has_text(f, "loss", label, "tick")) << label;
  // Equal steps in log space: 10 -> 1 -> 0.1 falls by the same height twice.
  auto pts = points_of(f, "loss");
  ASSERT_EQ(pts.size(), 3u);
  EXPECT_NEAR(pts[1].y - pts[0].y, pts[2].y - pts[1].y, 1e-9);

  // No positive value at all: that panel stays linear and says so.
  EXPECT_EQ(polylines(f, "delta").at(0).points, 5u);
  EXPECT_EQ(texts(f, "delta", "title"), (std::vector<std::string>{"delta"}));
  EXPECT_EQ(texts(f, "delta", "note"), (std::vector<std::string>{"linear scale: no positive values"}));
}

TEST(PlotFigure, PanelWithNoFiniteValues) {
  const Figure f = figure_of(line(R"({"step": 0, "split": "train", "loss": 1, "gn": null})") +
                             line(R"({"step": 1, "split": "train", "loss": 2, "gn": NaN})"));
  EXPECT_TRUE(polylines(f, "gn").empty());
  EXPECT_EQ(texts(f, "gn", "note"), (std::vector<std::string>{"no finite values"}));
  EXPECT_EQ(polylines(f, "loss").at(0).points, 2u);
}

TEST(PlotFigure, NamesAreDrawnAsPrintableText) {
  auto records = parse(line(R"({"step": 0, "split": "<a&b>", "x\"y": 1})") +
                       line(R"({"step": 1, "split": "c\u0001d", "x\"y": 2})"));
  // A file name need not be UTF-8.
  const Figure f = cli::metrics_figure(records, {"dir/<m>\xff.jsonl", {}, false});
  EXPECT_EQ(panels(f), (std::vector<std::string>{"x\"y"}));
  EXPECT_TRUE(has_text(f, "x\"y", "<a&b>", "legend text"));
  EXPECT_TRUE(has_text(f, "x\"y", "c\xEF\xBF\xBD" "d", "legend text"));
  EXPECT_EQ(texts(f, "", "header"),
            (std::vector<std::string>{"dir/<m>\xEF\xBF\xBD.jsonl (2 records)"}));
  // A long name is cut for the legend on a character boundary, not inside one.
  std::string long_name;
  for (int i = 0; i < 30; ++i) long_name += "\xC3\xA9";  // 30 x e-acute, 60 bytes
  const Figure cut = figure_of("{\"step\": 0, \"split\": \"" + long_name + "\", \"loss\": 1}\n");
  const std::string legend = texts(cut, "loss", "legend text").at(0);
  EXPECT_EQ(legend, long_name.substr(0, 38) + "\xE2\x80\xA6");
  // Both encoders take it (cairo refuses invalid UTF-8 outright).
  EXPECT_FALSE(f.png().empty());
  const std::string svg = f.svg();
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
  EXPECT_EQ(svg.find("<a&b>"), std::string::npos);
}

TEST(PlotFigure, PrintableText) {
  EXPECT_EQ(draw::printable("plain ascii"), "plain ascii");
  EXPECT_EQ(draw::printable("\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"),
            "\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");  // été € and an emoji
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(draw::printable("a\nb\tc\x7f"), "a" + r + "b" + r + "c" + r);
  EXPECT_EQ(draw::printable("\xC0\xAF"), r + r);            // overlong '/'
  EXPECT_EQ(draw::printable("\xED\xA0\x80"), r + r + r);    // a surrogate
  EXPECT_EQ(draw::printable("x\xE2\x82"), "x" + r + r);     // truncated
  EXPECT_EQ(draw::printable("\xF4\x90\x80\x80"), r + r + r + r);  // past U+10FFFF
  EXPECT_EQ(draw::printable("\xC2\x85"), r);                // C1 control
}

TEST(PlotFigure, LongSeriesAreThinnedKeepingSpikes) {
  std::string text;
  for (int step = 0; step < 20000; ++step) {
    double loss = step == 12345 ? 50.0 : step == 777 ? -5.0 : 2.0 + (step % 7) * 0.01;
    text += "{\"step\": " + std::to_string(step) +
            ", \"split\": \"train\", \"loss\": " + std::to_string(loss) + "}\n";
  }
  const Figure f = figure_of(text);
  auto lines = polylines(f);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_LE(lines[0].points, 4u * 428u);
  EXPECT_GE(lines[0].points, 428u);
  EXPECT_TRUE(f.find("", "markers").empty());  // no markers on long series
  EXPECT_LT(f.svg().size(), 200000u);
  // The spike up (50) and the dip (-5) are still drawn.
  double top = 1e9, bottom = -1e9;
  for (const draw::Point& pt : points_of(f)) {
    top = std::min(top, pt.y);
    bottom = std::max(bottom, pt.y);
  }
  const Item& box = frame(f, "loss");
  const pd::Axis y = pd::linear_axis(-5, 50);
  EXPECT_NEAR(top, box.y + box.h * (y.hi - 50) / (y.hi - y.lo), 1e-6);
  EXPECT_NEAR(bottom, box.y + box.h * (y.hi + 5) / (y.hi - y.lo), 1e-6);
}

TEST(PlotFigure, LegendAvoidsTheCurves) {
  // Falling: top right is free. Rising: top left is.
  std::string falling, rising;
  for (int step = 0; step <= 100; step += 10) {
    falling += "{\"step\": " + std::to_string(step) +
               ", \"split\": \"train\", \"loss\": " + std::to_string(100 - step) + "}\n";
    rising += "{\"step\": " + std::to_string(step) +
              ", \"split\": \"train\", \"loss\": " + std::to_string(step) + "}\n";
  }
  auto legend_x = [](const std::string& text) { return figure_of(text).find("", "legend").at(0)->x; };
  EXPECT_GT(legend_x(falling), 286);
  EXPECT_LT(legend_x(rising), 286);
  // The legend box holds its longest name.
  const Figure f = figure_of(line(R"({"step": 0, "split": "a rather long split name", "loss": 1})"));
  const Item& box = *f.find("", "legend").at(0);
  const Item& name = *f.find("", "legend text").at(0);
  EXPECT_LE(name.x + draw::text_width(name.text, name.font), box.x + box.w);
}

TEST(PlotFigure, OutOfOrderStepsAreSorted) {
  std::vector<double> xs;
  for (const draw::Point& pt : points_of(figure_of(line(R"({"step": 20, "split": "train", "loss": 1})") +
                                                   line(R"({"step": 0, "split": "train", "loss": 3})") +
                                                   line(R"({"step": 10, "split": "train", "loss": 2})"))))
    xs.push_back(pt.x);
  ASSERT_EQ(xs.size(), 3u);
  EXPECT_TRUE(std::is_sorted(xs.begin(), xs.end()));
}

// --- the pictures -----------------------------------------------------------

struct Decoded {
  int w = 0, h = 0;
  std::vector<uint8_t> rgb;
  const uint8_t* at(double x, double y) const {
    return &rgb[(static_cast<size_t>(y) * static_cast<size_t>(w) + static_cast<size_t>(x)) * 3];
  }
  // Pixels in the box darker than mid grey (text, lines).
  size_t ink(double x0, double y0, double x1, double y1) const {
    size_t n = 0;
    for (int y = static_cast<int>(y0); y < static_cast<int>(y1); ++y)
      for (int x = static_cast<int>(x0); x < static_cast<int>(x1); ++x) {
        const uint8_t* p = at(x, y);
        n += p[0] + p[1] + p[2] < 3 * 128;
      }
    return n;
  }
};

Decoded decode_png(const std::string& png) {
  Decoded d;
  int channels = 0;
  stbi_uc* px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(png.data()),
                                      static_cast<int>(png.size()), &d.w, &d.h, &channels, 3);
  EXPECT_NE(px, nullptr) << "not a PNG";
  if (px) d.rgb.assign(px, px + static_cast<size_t>(d.w) * static_cast<size_t>(d.h) * 3);
  stbi_image_free(px);
  return d;
}

TEST(PlotPicture, ThePngShowsLinesAndText) {
  const Figure f = figure_of(kGood);
  const Decoded png = decode_png(f.png());
  ASSERT_EQ(png.w, static_cast<int>(f.width()));
  ASSERT_EQ(png.h, static_cast<int>(f.height()));
  // The header and each panel's title and tick labels are drawn: dark pixels
  // where the text is, none in the blank margin above the header.
  const Item& header = *f.find("", "header").at(0);
  EXPECT_GT(png.ink(header.x, header.y - 12, header.x + 120, header.y + 3), 50u);
  EXPECT_EQ(png.ink(0, 0, f.width(), 3), 0u);
  for (const std::string& metric : panels(f)) {
    const Item& title = *f.find(metric, "title").at(0);
    EXPECT_GT(png.ink(title.x - 30, title.y - 12, title.x + 30, title.y + 3), 20u) << metric;
    const Item& box = frame(f, metric);
    EXPECT_GT(png.ink(box.x - 40, box.y, box.x - 2, box.y + box.h), 20u) << metric;  // y ticks
  }
  // Each series is drawn in its colour at its points (the markers' centres;
  // two lines that do not cross).
  const Figure two = figure_of(line(R"({"step": 0, "split": "train", "loss": 3})") +
                               line(R"({"step": 0, "split": "eval", "loss": 1})") +
                               line(R"({"step": 10, "split": "train", "loss": 2.5})") +
                               line(R"({"step": 20, "split": "train", "loss": 2})") +
                               line(R"({"step": 20, "split": "eval", "loss": 0.9})"));
  const Decoded lines = decode_png(two.png());
  ASSERT_EQ(two.find("", "series").size(), 2u);
  for (const Item* series : two.find("", "series")) {
    for (const draw::Point& p : series->points) {
      const uint8_t* px = lines.at(p.x, p.y);
      EXPECT_NEAR(px[0], std::lround(series->colour.r * 255), 40) << series->group << " " << series->key;
      EXPECT_NEAR(px[1], std::lround(series->colour.g * 255), 40);
      EXPECT_NEAR(px[2], std::lround(series->colour.b * 255), 40);
    }
  }
}

TEST(PlotPicture, TheSvgCarriesTheSameDrawing) {
  const Figure f = figure_of(kGood);
  const std::string svg = f.svg();
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("width=\"" + std::to_string(static_cast<int>(f.width())) + "px\""),
            std::string::npos)
      << svg.substr(0, 400);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  // Text is drawn as glyphs: one <use> per character drawn, at least as many as
  // the figure's texts hold.
  size_t glyphs = 0, chars = 0;
  for (size_t at = svg.find("<use"); at != std::string::npos; at = svg.find("<use", at + 1)) ++glyphs;
  for (const Item& it : f.items()) {
    if (it.kind == Item::Kind::text) {
      for (char c : it.text) chars += c != ' ';
    }
  }
  EXPECT_GE(glyphs, chars);
  // The series' colours (cairo writes rgb(r%, g%, b%)).
  EXPECT_NE(svg.find("rgb(12.156863%,46.666667%,70.588235%)"), std::string::npos);  // #1f77b4
  EXPECT_NE(svg.find("rgb(100%,49.803922%,5.490196%)"), std::string::npos);         // #ff7f0e
}

TEST(PlotPicture, TooLargeForAPngIsRefusedUpFront) {
  Figure f(20000, 10);
  f.text(1, 5, "x", draw::Font{}, draw::Colour{});
  EXPECT_NE(error_of([&] { f.png(); }).find("20000x10 pixels, more than a PNG is drawn at"),
            std::string::npos);
  EXPECT_FALSE(f.svg().empty());
}

// --- the verb ---------------------------------------------------------------

struct Outcome {
  int code = -1;
  std::string out, err;
};

Outcome recast_plot(std::vector<std::string> args) {
  args.insert(args.begin(), {"recast", "plot"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Outcome r;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  r.code = cli::run_cli(static_cast<int>(args.size()), argv.data(), {{"plot", cli::add_plot}});
  r.out = ::testing::internal::GetCapturedStdout();
  r.err = ::testing::internal::GetCapturedStderr();
  return r;
}

void expect_one_line_error(const Outcome& r, int code, const std::string& expected) {
  EXPECT_EQ(r.code, code) << r.err;
  EXPECT_EQ(r.err.rfind("recast: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(PlotVerb, WritesPngAndSvgBesideTheInput) {
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"), kGood);
  Outcome r = recast_plot({dir.file("metrics.jsonl")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("wrote " + dir.file("metrics.png") + " and " + dir.file("metrics.svg") +
                       " (4 panels, 6 records)"),
            std::string::npos)
      << r.err;
  const Figure f = cli::metrics_figure(parse_metrics_jsonl(kGood, dir.file("metrics.jsonl")),
                                       {dir.file("metrics.jsonl"), {}, false});
  EXPECT_EQ(read_bytes(dir.file("metrics.png")), f.png());
  EXPECT_EQ(read_bytes(dir.file("metrics.svg")).size(), f.svg().size());
  EXPECT_EQ(listing(dir.path()),
            (std::vector<std::string>{"metrics.jsonl", "metrics.png", "metrics.svg"}));
}

TEST(PlotVerb, Options) {
  TempDir dir;
  write_bytes(dir.file("run.log"), kGood);
  const auto records = parse_metrics_jsonl(kGood, dir.file("run.log"));
  Outcome r = recast_plot(
      {dir.file("run.log"), "-o", dir.file("c.PNG"), "--metrics", "lr, loss", "--log-y"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_bytes(dir.file("c.PNG")),
            cli::metrics_figure(records, {dir.file("run.log"), {"lr", "loss"}, true}).png());

  r = recast_plot({dir.file("run.log"), "-o", dir.file("c.svg"), "--metrics", "loss"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_bytes(dir.file("c.svg")).rfind("<?xml", 0), 0u);

  r = recast_plot({dir.file("run.log"), "--metrics", "loss", "--metrics", "perplexity", "--format",
                   "png"});
  ASSERT_EQ(r.code, 0) << r.err;
  // Not .jsonl: the extension is appended; --format keeps to one picture.
  EXPECT_EQ(read_bytes(dir.file("run.log.png")),
            cli::metrics_figure(records, {dir.file("run.log"), {"loss", "perplexity"}, false}).png());
  EXPECT_FALSE(std::filesystem::exists(dir.file("run.log.svg")));

  r = recast_plot({dir.file("run.log"), "-o", "-", "--metrics", "loss"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("<?xml", 0), 0u);
  r = recast_plot({dir.file("run.log"), "-o", "-", "--format", "png"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("\x89PNG", 0), 0u);
  r = recast_plot({dir.file("run.log"), "-o", dir.file("curves"), "--format", "svg"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_bytes(dir.file("curves")).rfind("<?xml", 0), 0u);
}

TEST(PlotVerb, ErrorsLeaveNoOutput) {
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"),
              kGood + line(R"({"step": 50, "split": "train", "loss": 1.8})") + "[]\n");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl")}), 1,
                        dir.file("metrics.jsonl") + ":9: not a JSON object (found array)");

  write_bytes(dir.file("metrics.jsonl"), kGood);
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "--metrics", "loss,foo"}), 1,
                        "no metric 'foo' in " + dir.file("metrics.jsonl") +
                            " (found: loss, lr, grad_norm, perplexity)");
  write_bytes(dir.file("empty.jsonl"), "");
  expect_one_line_error(recast_plot({dir.file("empty.jsonl")}), 1,
                        dir.file("empty.jsonl") + ": no records");
  expect_one_line_error(recast_plot({dir.file("absent.jsonl")}), 1,
                        dir.file("absent.jsonl") + ": cannot open for reading");
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"empty.jsonl", "metrics.jsonl"}));

  // Usage errors exit 2.
  expect_one_line_error(recast_plot({}), 2, "metrics_file is required");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "--metrics", "loss, ,lr"}), 2,
                        "--metrics: empty metric name");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("metrics.jsonl")}),
                        2, "expected a .png or .svg file");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("metrics.jsonl"),
                                     "--format", "svg"}),
                        2, "is the input file");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("c.pdf")}), 2,
                        "-o '" + dir.file("c.pdf") + "': expected a .png or .svg file");
  expect_one_line_error(
      recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("c.svg"), "--format", "png"}), 2,
      "--format png conflicts with -o '" + dir.file("c.svg") + "'");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "--format", "pdf"}), 2, "--format");
  EXPECT_EQ(read_bytes(dir.file("metrics.jsonl")), kGood);
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"empty.jsonl", "metrics.jsonl"}));
}

TEST(PlotVerb, RefusesToReplaceWhatIsNoFile) {
  // An atomic write renames over the path: it would replace a directory entry
  // such as /dev/null itself.
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"), kGood);
  std::filesystem::create_directory(dir.file("out.svg"));
  ASSERT_EQ(::mkfifo(dir.file("pipe.png").c_str(), 0600), 0);
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("out.svg")}), 2,
                        dir.file("out.svg") + ": exists and is not a regular file (a directory)");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("pipe.png")}), 2,
                        dir.file("pipe.png") + ": exists and is not a regular file (a device or pipe)");
  EXPECT_TRUE(std::filesystem::is_fifo(dir.file("pipe.png")));
  EXPECT_TRUE(std::filesystem::is_directory(dir.file("out.svg")));
  // By default both pictures are written, so both paths are checked first.
  std::filesystem::create_directory(dir.file("metrics.svg"));
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl")}), 2,
                        dir.file("metrics.svg") + ": exists and is not a regular file");
  EXPECT_FALSE(std::filesystem::exists(dir.file("metrics.png")));
}

TEST(PlotVerb, InTheVerbTableAsTorchFree) {
  EXPECT_FALSE(cli::verb_info("plot").needs_torch);
}

}  // namespace
}  // namespace recast::testing
