// recast plot: reading metrics.jsonl, the axes, the SVG, and the verb as users
// meet it (run in-process through run_cli, so this binary needs no LibTorch).

#include "recast/cli/plot.h"
#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>
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
using cli::render_metrics_svg;
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

// The values of `attribute` on each <element ...> tag that has it, in order.
std::vector<std::string> attribute_values(const std::string& svg, const std::string& element,
                                          const std::string& attribute) {
  std::vector<std::string> out;
  const std::string open = "<" + element + " ", key = " " + attribute + "=\"";
  for (size_t pos = svg.find(open); pos != std::string::npos; pos = svg.find(open, pos + 1)) {
    const size_t end = svg.find('>', pos);
    size_t k = svg.find(key, pos);
    if (k == std::string::npos || k > end) continue;
    k += key.size();
    out.push_back(svg.substr(k, svg.find('"', k) - k));
  }
  return out;
}

struct Point {
  double x, y;
};

// "1.0,2.0 3.0,4.0" -> {{1, 2}, {3, 4}}
std::vector<Point> points_of(const std::string& points) {
  std::vector<Point> out;
  std::istringstream in(points);
  std::string pair;
  while (in >> pair) {
    const size_t comma = pair.find(',');
    out.push_back({std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1))});
  }
  return out;
}

// The part of the SVG that draws one metric's panel.
std::string panel(const std::string& svg, const std::string& metric) {
  auto start = svg.find("<g class=\"panel\" data-metric=\"" + metric + "\"");
  if (start == std::string::npos) return "";
  auto next = svg.find("<g class=\"panel\"", start + 1);
  return svg.substr(start, next == std::string::npos ? std::string::npos : next - start);
}

struct Polyline {
  std::string split;
  size_t points = 0;
};

std::vector<Polyline> polylines(const std::string& svg) {
  std::vector<Polyline> out;
  auto splits = attribute_values(svg, "polyline", "data-split");
  auto points = attribute_values(svg, "polyline", "points");
  EXPECT_EQ(splits.size(), points.size());
  for (size_t i = 0; i < std::min(splits.size(), points.size()); ++i)
    out.push_back({splits[i], points_of(points[i]).size()});
  return out;
}

// One metrics.jsonl line.
std::string line(const char* json) {
  return std::string(json) + "\n";
}

std::vector<MetricRecord> parse(const std::string& text) {
  return parse_metrics_jsonl(text, "m.jsonl");
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

// --- rendering --------------------------------------------------------------

TEST(PlotSvg, OnePolylinePerSplitPerPanel) {
  auto records = parse(kGood);
  std::string svg = render_metrics_svg(records, {"m.jsonl", {}, false});
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");

  // Panels in order, loss first.
  EXPECT_EQ(attribute_values(svg, "g", "data-metric"),
            (std::vector<std::string>{"loss", "lr", "grad_norm", "perplexity"}));

  // loss: train has 3 finite points (the null is skipped), eval 2.
  auto loss = polylines(panel(svg, "loss"));
  ASSERT_EQ(loss.size(), 2u);
  EXPECT_EQ(loss[0].split, "train");
  EXPECT_EQ(loss[0].points, 3u);
  EXPECT_EQ(loss[1].split, "eval");
  EXPECT_EQ(loss[1].points, 2u);
  EXPECT_NE(panel(svg, "loss").find(">train</text>"), std::string::npos);  // legend
  EXPECT_NE(panel(svg, "loss").find(">eval</text>"), std::string::npos);

  // Metrics of one split draw one line and name only that split.
  auto lr = polylines(panel(svg, "lr"));
  ASSERT_EQ(lr.size(), 1u);
  EXPECT_EQ(lr[0].split, "train");
  EXPECT_EQ(lr[0].points, 4u);
  EXPECT_EQ(panel(svg, "lr").find(">eval</text>"), std::string::npos);
  auto ppl = polylines(panel(svg, "perplexity"));
  ASSERT_EQ(ppl.size(), 1u);
  EXPECT_EQ(ppl[0].split, "eval");

  // A split keeps its colour in every panel.
  auto loss_colours = attribute_values(panel(svg, "loss"), "polyline", "stroke");
  EXPECT_EQ(attribute_values(panel(svg, "lr"), "polyline", "stroke")[0], loss_colours[0]);
  EXPECT_EQ(attribute_values(panel(svg, "perplexity"), "polyline", "stroke")[0], loss_colours[1]);
  EXPECT_NE(loss_colours[0], loss_colours[1]);

  // Tick labels: the shared step axis 0..40 and the loss axis.
  std::string p = panel(svg, "loss");
  for (const char* label : {">0<", ">10<", ">20<", ">30<", ">40<", ">1.8<", ">2<", ">2.6<"})
    EXPECT_NE(p.find(label), std::string::npos) << label;
  EXPECT_NE(p.find(">step</text>"), std::string::npos);
}

TEST(PlotSvg, PointsLieInsideThePlotArea) {
  auto records = parse(kGood);
  std::string svg = render_metrics_svg(records, {"m.jsonl", {"loss"}, false});
  std::string p = panel(svg, "loss");
  const double x = std::stod(attribute_values(p, "rect", "x")[0]);
  const double y = std::stod(attribute_values(p, "rect", "y")[0]);
  const double w = std::stod(attribute_values(p, "rect", "width")[0]);
  const double h = std::stod(attribute_values(p, "rect", "height")[0]);
  for (const auto& pts : attribute_values(p, "polyline", "points")) {
    for (const Point& pt : points_of(pts)) {
      EXPECT_GE(pt.x, x - 0.05);
      EXPECT_LE(pt.x, x + w + 0.05);
      EXPECT_GE(pt.y, y - 0.05);
      EXPECT_LE(pt.y, y + h + 0.05);
    }
  }
}

TEST(PlotSvg, SelectedMetricsInOrder) {
  auto records = parse(kGood);
  std::string svg = render_metrics_svg(records, {"m.jsonl", {"perplexity", "loss"}, false});
  EXPECT_EQ(attribute_values(svg, "g", "data-metric"),
            (std::vector<std::string>{"perplexity", "loss"}));
}

TEST(PlotSvg, MissingMetric) {
  auto records = parse(line(R"({"step": 1, "split": "train", "loss": 1, "lr": 0.1})"));
  EXPECT_EQ(error_of([&] {
              render_metrics_svg(records, {"metrics.jsonl", {"loss", "foo"}, false});
            }),
            "no metric 'foo' in metrics.jsonl (found: loss, lr)");
  auto bare = parse(line(R"({"step": 1, "split": "train", "elapsed_s": 3})"));
  EXPECT_EQ(error_of([&] {
              render_metrics_svg(bare, {"metrics.jsonl", {}, false});
            }).rfind("metrics.jsonl: no metrics", 0),
            0u);
  EXPECT_EQ(error_of([&] {
              render_metrics_svg({}, {"metrics.jsonl", {}, false});
            }),
            "metrics.jsonl: no records");
}

TEST(PlotSvg, LogScaleLeavesOutNonPositiveValues) {
  auto records = parse(line(R"({"step": 0, "split": "train", "loss": 10, "delta": -1})") +
                       line(R"({"step": 1, "split": "train", "loss": 0, "delta": 0})") +
                       line(R"({"step": 2, "split": "train", "loss": 1, "delta": -3})") +
                       line(R"({"step": 3, "split": "train", "loss": -2, "delta": -2})") +
                       line(R"({"step": 4, "split": "train", "loss": 0.1, "delta": -1})"));
  std::string svg = render_metrics_svg(records, {"m.jsonl", {}, true});
  std::string loss = panel(svg, "loss");
  auto lines = polylines(loss);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].points, 3u);  // 10, 1, 0.1
  EXPECT_NE(loss.find("loss (log scale)"), std::string::npos);
  EXPECT_NE(loss.find("2 values &lt;= 0 not shown"), std::string::npos);
  for (const char* label : {">0.1<", ">1<", ">10<"})
    EXPECT_NE(loss.find(label), std::string::npos) << label;
  // Equal steps in log space: 10 -> 1 -> 0.1 falls by the same height twice.
  auto pts = points_of(attribute_values(loss, "polyline", "points").at(0));
  ASSERT_EQ(pts.size(), 3u);
  EXPECT_NEAR(pts[1].y - pts[0].y, pts[2].y - pts[1].y, 0.15);

  // No positive value at all: that panel stays linear and says so.
  std::string delta = panel(svg, "delta");
  EXPECT_EQ(polylines(delta).at(0).points, 5u);
  EXPECT_EQ(delta.find("(log scale)"), std::string::npos);
  EXPECT_NE(delta.find("linear scale: no positive values"), std::string::npos);
}

TEST(PlotSvg, PanelWithNoFiniteValues) {
  auto records = parse(line(R"({"step": 0, "split": "train", "loss": 1, "gn": null})") +
                       line(R"({"step": 1, "split": "train", "loss": 2, "gn": NaN})"));
  std::string svg = render_metrics_svg(records, {"m.jsonl", {}, false});
  EXPECT_TRUE(polylines(panel(svg, "gn")).empty());
  EXPECT_NE(panel(svg, "gn").find("no finite values"), std::string::npos);
  EXPECT_EQ(polylines(panel(svg, "loss")).at(0).points, 2u);
}

TEST(PlotSvg, NamesAreEscaped) {
  auto records = parse(line(R"({"step": 0, "split": "<a&b>", "x\"y": 1})") +
                       line(R"({"step": 1, "split": "c\u0001d", "x\"y": 2})"));
  std::string svg = render_metrics_svg(records, {"dir/<m>.jsonl", {}, false});
  EXPECT_EQ(svg.find("<a&b>"), std::string::npos);
  EXPECT_NE(svg.find("&lt;a&amp;b&gt;"), std::string::npos);
  EXPECT_NE(svg.find("data-metric=\"x&quot;y\""), std::string::npos);
  EXPECT_NE(svg.find("c\xEF\xBF\xBD"
                     "d"),
            std::string::npos);
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
  EXPECT_NE(svg.find("dir/&lt;m&gt;.jsonl"), std::string::npos);
}

TEST(PlotSvg, LongSeriesAreThinnedKeepingSpikes) {
  std::string text;
  for (int step = 0; step < 20000; ++step) {
    double loss = step == 12345 ? 50.0 : step == 777 ? -5.0 : 2.0 + (step % 7) * 0.01;
    text += "{\"step\": " + std::to_string(step) +
            ", \"split\": \"train\", \"loss\": " + std::to_string(loss) + "}\n";
  }
  std::string svg = render_metrics_svg(parse(text), {"m.jsonl", {}, false});
  auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_LE(lines[0].points, 4u * 428u);
  EXPECT_GE(lines[0].points, 428u);
  EXPECT_LT(svg.size(), 100000u);
  EXPECT_EQ(svg.find("<circle"), std::string::npos);  // no markers on long series
  // The spike up (50) and the dip (-5) are still drawn.
  double top = 1e9, bottom = -1e9;
  for (const Point& pt : points_of(attribute_values(svg, "polyline", "points").at(0))) {
    top = std::min(top, pt.y);
    bottom = std::max(bottom, pt.y);
  }
  const std::string loss = panel(svg, "loss");
  const double frame_y = std::stod(attribute_values(loss, "rect", "y").at(0));
  const double frame_h = std::stod(attribute_values(loss, "rect", "height").at(0));
  const pd::Axis y = pd::linear_axis(-5, 50);
  EXPECT_NEAR(top, frame_y + frame_h * (y.hi - 50) / (y.hi - y.lo), 0.1);
  EXPECT_NEAR(bottom, frame_y + frame_h * (y.hi + 5) / (y.hi - y.lo), 0.1);
}

TEST(PlotSvg, LegendAvoidsTheCurves) {
  // Falling: top right is free. Rising: top left is.
  std::string falling, rising;
  for (int step = 0; step <= 100; step += 10) {
    falling += "{\"step\": " + std::to_string(step) +
               ", \"split\": \"train\", \"loss\": " + std::to_string(100 - step) + "}\n";
    rising += "{\"step\": " + std::to_string(step) +
              ", \"split\": \"train\", \"loss\": " + std::to_string(step) + "}\n";
  }
  auto legend_x = [](const std::string& text) {
    std::string svg = render_metrics_svg(parse(text), {"m.jsonl", {}, false});
    auto legend = svg.substr(svg.find("<g class=\"legend\">"));
    return std::stod(attribute_values(legend, "rect", "x").at(0));
  };
  EXPECT_GT(legend_x(falling), 286);
  EXPECT_LT(legend_x(rising), 286);
}

TEST(PlotSvg, OutOfOrderStepsAreSorted) {
  auto records = parse(line(R"({"step": 20, "split": "train", "loss": 1})") +
                       line(R"({"step": 0, "split": "train", "loss": 3})") +
                       line(R"({"step": 10, "split": "train", "loss": 2})"));
  std::string svg = render_metrics_svg(records, {"m.jsonl", {}, false});
  std::vector<double> xs;
  for (const Point& pt : points_of(attribute_values(svg, "polyline", "points").at(0)))
    xs.push_back(pt.x);
  ASSERT_EQ(xs.size(), 3u);
  EXPECT_TRUE(std::is_sorted(xs.begin(), xs.end()));
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

TEST(PlotVerb, WritesTheSvgBesideTheInput) {
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"), kGood);
  Outcome r = recast_plot({dir.file("metrics.jsonl")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("wrote " + dir.file("metrics.svg") + " (4 panels, 6 records)"),
            std::string::npos)
      << r.err;
  std::string svg = read_bytes(dir.file("metrics.svg"));
  EXPECT_EQ(svg, render_metrics_svg(parse_metrics_jsonl(kGood, dir.file("metrics.jsonl")),
                                    {dir.file("metrics.jsonl"), {}, false}));
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"metrics.jsonl", "metrics.svg"}));
}

TEST(PlotVerb, Options) {
  TempDir dir;
  write_bytes(dir.file("run.log"), kGood);
  Outcome r = recast_plot(
      {dir.file("run.log"), "-o", dir.file("c.svg"), "--metrics", "lr, loss", "--log-y"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string svg = read_bytes(dir.file("c.svg"));
  EXPECT_EQ(attribute_values(svg, "g", "data-metric"), (std::vector<std::string>{"lr", "loss"}));
  EXPECT_NE(svg.find("lr (log scale)"), std::string::npos);

  r = recast_plot({dir.file("run.log"), "--metrics", "loss", "--metrics", "perplexity"});
  ASSERT_EQ(r.code, 0) << r.err;
  svg = read_bytes(dir.file("run.log.svg"));  // not .jsonl: .svg is appended
  EXPECT_EQ(attribute_values(svg, "g", "data-metric"),
            (std::vector<std::string>{"loss", "perplexity"}));

  r = recast_plot({dir.file("run.log"), "-o", "-", "--metrics", "loss"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("<?xml", 0), 0u);
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
                        2, "is the input file");
  EXPECT_EQ(read_bytes(dir.file("metrics.jsonl")), kGood);
  EXPECT_EQ(listing(dir.path()), (std::vector<std::string>{"empty.jsonl", "metrics.jsonl"}));
}

TEST(PlotVerb, RefusesToReplaceWhatIsNoFile) {
  // An atomic write renames over the path: it would replace a directory entry
  // such as /dev/null itself.
  TempDir dir;
  write_bytes(dir.file("metrics.jsonl"), kGood);
  std::filesystem::create_directory(dir.file("out.svg"));
  ASSERT_EQ(::mkfifo(dir.file("pipe").c_str(), 0600), 0);
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("out.svg")}), 2,
                        dir.file("out.svg") + ": exists and is not a regular file (a directory)");
  expect_one_line_error(recast_plot({dir.file("metrics.jsonl"), "-o", dir.file("pipe")}), 2,
                        dir.file("pipe") + ": exists and is not a regular file (a device or pipe)");
  EXPECT_TRUE(std::filesystem::is_fifo(dir.file("pipe")));
  EXPECT_TRUE(std::filesystem::is_directory(dir.file("out.svg")));
}

TEST(PlotVerb, InTheVerbTableAsTorchFree) {
  EXPECT_FALSE(cli::verb_info("plot").needs_torch);
}

}  // namespace
}  // namespace recast::testing
