#pragma once

// recast plot: training curves from a metrics.jsonl file (one JSON object per
// line, written by the trainer) drawn as PNG and / or SVG, one panel per
// metric, one line per split. No LibTorch: the `recast` front answers it.
//
//   {"step": 12, "split": "train", "loss": 2.31, "lr": 0.0003, "elapsed_s": 3.2}
//   {"step": 100, "split": "eval", "loss": 2.05, "perplexity": 7.77}
//
// Every key other than step / split / elapsed_s whose value is a number is a
// metric; a null value (how JSON writers store NaN and infinities) or a
// non-finite one is a skipped point. Other values (strings, booleans, arrays)
// are ignored.

#include "recast/draw/figure.h"

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace recast::cli {

struct MetricRecord {
  size_t line = 0;  // 1-based line in the file, for messages
  double step = 0;
  std::string split;
  // By key (as the JSON object holds them); NaN where the file holds null or a
  // non-finite value.
  std::vector<std::pair<std::string, double>> values;
};

// Parses metrics.jsonl text; `source` (the path) names the file in errors,
// which read "<source>:<line>: <what>". Blank lines are skipped. A last line
// with no newline that is not valid JSON is taken to be a record the trainer is
// still writing: it is skipped with a warning. NaN / Infinity / -Infinity
// tokens (Python's json module writes them) read as non-finite values.
// Throws recast::Error on a malformed line and on a file with no records.
std::vector<MetricRecord> parse_metrics_jsonl(std::string_view text, const std::string& source);
std::vector<MetricRecord> read_metrics_jsonl(const std::string& path);

// Metric names in the records: "loss" first, then the others in order of first
// appearance (the keys of one line alphabetically).
std::vector<std::string> metric_names(const std::vector<MetricRecord>& records);

struct PlotOptions {
  std::string source;                // the file, for errors and the picture's header
  std::vector<std::string> metrics;  // panels, in this order; empty: metric_names()
  bool log_y = false;
};

// The picture, laid out: each panel's items carry the metric as their group;
// roles "title", "frame", "grid", "tick" (key "x" / "y"), "label", "note",
// "series" and "markers" (key: the split), "legend", "legend key" and "legend
// text" (key: the split); the file's name is the "header". Throws
// recast::Error when a requested metric is not in the records ("no metric 'foo'
// in FILE (found: loss, lr)") or there are none. With log_y, points <= 0 are
// left out (the panel says how many); a panel with no positive value falls back
// to a linear scale and says so.
draw::Figure metrics_figure(const std::vector<MetricRecord>& records, const PlotOptions& options);

// Exposed for tests.
namespace plot_detail {

struct Axis {
  double lo = 0, hi = 1;      // the axis range, on tick boundaries
  std::vector<double> ticks;  // values, ascending, within [lo, hi]
  std::vector<std::string> labels;
};

// Round-number ticks (1, 2 or 5 x 10^k apart, about `target` of them) covering
// [lo, hi]. integer_steps: never closer than 1 apart.
Axis linear_axis(double lo, double hi, int target = 5, bool integer_steps = false);
// Ticks for a logarithmic axis covering [lo, hi] (both > 0): 1, 2, 3, 5, 7 x
// 10^k within a decade, 1, 2, 5 x 10^k up to 2.5 decades, powers of ten (every
// n-th for very wide ranges) beyond; a range within a factor of 3 gets
// linear_axis's ticks.
Axis log_axis(double lo, double hi);
// Shortest faithful text of a tick value: "0", "0.25", "2000", "3e-4", "1.5e6".
std::string format_number(double v);

}  // namespace plot_detail

}  // namespace recast::cli
