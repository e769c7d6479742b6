// recast plot METRICS.jsonl [-o OUT.png|OUT.svg] [--metrics a,b] [--log-y]:
// training curves, one panel per metric and one line per split sharing the step
// axis, laid out as a draw::Figure and drawn by cairo (draw/figure.h) to PNG
// and / or SVG.

#include "recast/cli/plot.h"

#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/draw/figure.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>

namespace recast::cli {

// ---------------------------------------------------------------------------
// Reading metrics.jsonl

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

bool is_reserved_key(const std::string& key) {
  return key == "step" || key == "split" || key == "elapsed_s";
}

// Python's json module writes NaN, Infinity and -Infinity, which are not JSON.
// Outside strings no other bare word starts with N or I, so each occurrence is
// such a token (or garbage that stays invalid): it becomes null.
std::string nonfinite_tokens_to_null(std::string_view line) {
  if (line.find('N') == std::string_view::npos && line.find('I') == std::string_view::npos)
    return std::string(line);
  std::string out;
  out.reserve(line.size());
  bool in_string = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < line.size()) {
        out += line[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (std::string_view token : {"NaN", "Infinity", "-Infinity"}) {
      if (line.substr(i, token.size()) == token) {
        out += "null";
        i += token.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

MetricRecord parse_record(const nlohmann::json& j, size_t line_no, const std::string& where) {
  if (!j.is_object()) {
    throw Error(msg(where, ": not a JSON object (found ", io::json_type_name(j), ")"));
  }
  MetricRecord r;
  r.line = line_no;
  auto step = j.find("step");
  if (step == j.end()) throw Error(msg(where, ": no 'step'"));
  if (!step->is_number()) {
    throw Error(msg(where, ": 'step' is a ", io::json_type_name(*step), ", expected a number"));
  }
  r.step = step->get<double>();
  if (!std::isfinite(r.step)) throw Error(msg(where, ": 'step' is not finite"));
  auto split = j.find("split");
  if (split == j.end()) throw Error(msg(where, ": no 'split'"));
  if (!split->is_string()) {
    throw Error(msg(where, ": 'split' is a ", io::json_type_name(*split), ", expected a string"));
  }
  r.split = split->get<std::string>();
  for (const auto& [key, value] : j.items()) {
    if (is_reserved_key(key)) continue;
    if (value.is_number()) {
      double v = value.get<double>();
      r.values.emplace_back(key, std::isfinite(v) ? v : kNaN);
    } else if (value.is_null()) {
      r.values.emplace_back(key, kNaN);
    }
  }
  return r;
}

}  // namespace

std::vector<MetricRecord> parse_metrics_jsonl(std::string_view text, const std::string& source) {
  std::vector<MetricRecord> records;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool terminated = end != std::string_view::npos;
    if (!terminated) end = text.size();
    std::string line(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = msg(source, ":", line_no);
    nlohmann::json j;
    try {
      j = io::parse_json_strict(nonfinite_tokens_to_null(line), where);
    } catch (const Error&) {
      // The trainer may be writing this line right now.
      if (terminated || records.empty()) throw;
      log::warn(where, ": last line is incomplete, skipped (is the file still being written?)");
      continue;
    }
    records.push_back(parse_record(j, line_no, where));
  }
  if (records.empty()) throw Error(msg(source, ": no records"));
  return records;
}

std::vector<MetricRecord> read_metrics_jsonl(const std::string& path) {
  if (io::is_directory(path)) {
    throw Error(msg(path, ": is a directory, expected a metrics.jsonl file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(msg(path, ": cannot open for reading (", std::strerror(errno), ")"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(msg(path, ": read error"));
  return parse_metrics_jsonl(text.str(), path);
}

std::vector<std::string> metric_names(const std::vector<MetricRecord>& records) {
  std::vector<std::string> names;
  bool has_loss = false;
  for (const auto& r : records) {
    for (const auto& kv : r.values) {
      if (kv.first == "loss") {
        has_loss = true;
      } else if (std::find(names.begin(), names.end(), kv.first) == names.end()) {
        names.push_back(kv.first);
      }
    }
  }
  if (has_loss) names.insert(names.begin(), "loss");
  return names;
}

// ---------------------------------------------------------------------------
// Axes

namespace plot_detail {
namespace {

// m x 10^e, as exactly as a double allows (division by an exact power of ten
// rounds once, where multiplying by 10^-e would round twice).
double scaled(double m, int e) {
  if (e >= 0 || e < -300) return m * std::pow(10.0, e);
  return m / std::pow(10.0, -e);
}

Axis fallback_axis(double lo, double hi) {
  Axis a;
  a.lo = lo;
  a.hi = hi;
  a.ticks = {lo, hi};
  a.labels = {format_number(lo), format_number(hi)};
  return a;
}

}  // namespace

std::string format_number(double v) {
  if (v == 0 || !std::isfinite(v)) return v == 0 ? "0" : msg(v);
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1e-3 && a < 1e6) {
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
  }
  // "3.000000000e-04" -> "3e-4"
  std::snprintf(buf, sizeof buf, "%.9e", v);
  std::string s = buf;
  size_t e = s.find('e');
  std::string mantissa = s.substr(0, e);
  std::string exponent = s.substr(e + 1);
  if (mantissa.find('.') != std::string::npos) {
    while (mantissa.back() == '0') mantissa.pop_back();
    if (mantissa.back() == '.') mantissa.pop_back();
  }
  bool negative = exponent[0] == '-';
  exponent = exponent.substr(1);
  while (exponent.size() > 1 && exponent[0] == '0') exponent.erase(0, 1);
  return mantissa + "e" + (negative ? "-" : "") + exponent;
}

Axis linear_axis(double lo, double hi, int target, bool integer_steps) {
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    double d = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= d;
    hi += d;
  }
  const double raw = (hi - lo) / std::max(target, 1);
  if (!std::isfinite(raw) || raw <= 0) return fallback_axis(lo, hi);
  // Of the steps 1, 2, 5 x 10^e near `raw`, the one whose ticks (the range
  // widened to multiples of the step) number closest to target + 1; on a tie
  // the larger step.
  const int e_raw = static_cast<int>(std::floor(std::log10(raw)));
  int m = 0, e = 0;
  double k0 = 0, k1 = 0, best = std::numeric_limits<double>::infinity();
  for (int ee = e_raw + 1; ee >= e_raw - 1; --ee) {
    for (int mm : {5, 2, 1}) {
      if (integer_steps && ee < 0) continue;
      const double step = scaled(mm, ee);
      const double a0 = std::floor(lo / step + 1e-9);
      const double a1 = std::ceil(hi / step - 1e-9);
      const double score = std::fabs(a1 - a0 - target);
      if (score < best) {
        best = score;
        m = mm;
        e = ee;
        k0 = a0;
        k1 = a1;
      }
    }
  }
  if (m == 0) {  // integer steps and a range well under 1
    m = 1;
    e = 0;
    k0 = std::floor(lo + 1e-9);
    k1 = std::ceil(hi - 1e-9);
  }
  // Beyond 2^50 multiples of the step, doubles no longer tell ticks apart.
  if (std::fabs(k0) > 1e15 || std::fabs(k1) > 1e15 || k1 - k0 > 1000) {
    return fallback_axis(lo, hi);
  }
  Axis a;
  for (double k = k0; k <= k1; k += 1) {
    double v = scaled(k * m, e);
    a.ticks.push_back(v);
    a.labels.push_back(format_number(v));
  }
  a.lo = a.ticks.front();
  a.hi = a.ticks.back();
  return a;
}

Axis log_axis(double lo, double hi) {
  if (hi < lo) std::swap(lo, hi);
  if (!(lo > 0) || !std::isfinite(hi)) return fallback_axis(lo, hi);
  // Within a factor of 3, 1-2-5 ticks would be one or two: the linear axis's
  // ticks serve (the scale stays logarithmic).
  if (hi / lo <= 3) {
    Axis a = linear_axis(lo, hi);
    if (a.lo > 0) return a;
  }
  static const int kBoundMantissas[] = {1, 2, 5};
  // Largest 1/2/5 x 10^e <= lo and smallest >= hi.
  int e_lo = static_cast<int>(std::floor(std::log10(lo)));
  if (scaled(1, e_lo) > lo) --e_lo;
  if (scaled(1, e_lo + 1) <= lo) ++e_lo;
  double b_lo = scaled(1, e_lo);
  for (int m : kBoundMantissas) {
    if (scaled(m, e_lo) <= lo) b_lo = scaled(m, e_lo);
  }
  int e_hi = static_cast<int>(std::floor(std::log10(hi)));
  if (scaled(1, e_hi) > hi) --e_hi;
  if (scaled(1, e_hi + 1) <= hi) ++e_hi;
  double b_hi = scaled(10, e_hi);
  for (int i = 2; i >= 0; --i) {
    if (scaled(kBoundMantissas[i], e_hi) >= hi) b_hi = scaled(kBoundMantissas[i], e_hi);
  }
  if (b_lo == b_hi) {  // lo == hi == a bound: one step either side
    b_lo = b_lo / 2;
    b_hi = b_hi * 2;
  }
  if (!(b_lo > 0) || !std::isfinite(b_hi)) return fallback_axis(lo, hi);

  const double decades = std::log10(b_hi / b_lo);
  std::vector<int> mantissas;
  int stride = 1;
  if (decades <= 1.0 + 1e-9) {
    mantissas = {1, 2, 3, 5, 7};
  } else if (decades <= 2.5) {
    mantissas = {1, 2, 5};
  } else {
    mantissas = {1};
    stride = static_cast<int>(std::ceil(decades / 8));
  }
  Axis a;
  a.lo = b_lo;
  a.hi = b_hi;
  const int e_first = static_cast<int>(std::floor(std::log10(b_lo) + 1e-9));
  const int e_last = static_cast<int>(std::floor(std::log10(b_hi) + 1e-9));
  for (int e = e_first; e <= e_last; ++e) {
    if ((e - e_first) % stride != 0) continue;
    for (int m : mantissas) {
      double v = scaled(m, e);
      if (v < b_lo * (1 - 1e-9) || v > b_hi * (1 + 1e-9)) continue;
      a.ticks.push_back(v);
      a.labels.push_back(format_number(v));
    }
  }
  if (a.ticks.empty()) return fallback_axis(b_lo, b_hi);
  return a;
}

}  // namespace plot_detail

// ---------------------------------------------------------------------------
// The figure

namespace {

using draw::Anchor;
using draw::Colour;
using draw::Font;
using plot_detail::Axis;
using Pixel = draw::Point;

// Tableau 10: one colour per split, the same in every panel.
const char* const kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
const Colour kInk = Colour::hex("#333333"), kFaint = Colour::hex("#888888");
const Colour kFrame = Colour::hex("#999999"), kGrid = Colour::hex("#e4e4e4");
const Font kTickFont{11}, kTitleFont{13, true}, kHeaderFont{13}, kNoteFont{11, false, true};

constexpr double kPanelW = 520, kPanelH = 320;
constexpr double kLeft = 72, kRight = 20, kTop = 34, kBottom = 46;
constexpr double kHeaderH = 30;
constexpr size_t kMarkersUpTo = 60;  // series this short also get a dot per point

struct Series {
  std::string split;
  size_t colour = 0;
  std::vector<std::pair<double, double>> points;  // (step, value), by step
};

struct Panel {
  std::string metric;
  std::vector<Series> series;
  size_t non_positive = 0;  // left out on a log scale
  bool log_y = false;
  bool log_fallback = false;  // asked for log, no positive value
};

Panel collect(const std::vector<MetricRecord>& records, const std::vector<std::string>& splits,
              const std::string& metric, bool log_y) {
  Panel p;
  p.metric = metric;
  p.log_y = log_y;
  std::vector<Series> all(splits.size());
  for (size_t i = 0; i < splits.size(); ++i) {
    all[i].split = splits[i];
    all[i].colour = i % std::size(kColours);
  }
  bool any_positive = false;
  for (const auto& r : records) {
    for (const auto& [key, value] : r.values) {
      if (key != metric || !std::isfinite(value)) continue;
      size_t s =
          static_cast<size_t>(std::find(splits.begin(), splits.end(), r.split) - splits.begin());
      all[s].points.emplace_back(r.step, value);
      if (value > 0) any_positive = true;
    }
  }
  if (log_y && !any_positive) {
    p.log_y = false;
    p.log_fallback = true;
  }
  for (auto& s : all) {
    if (p.log_y) {
      auto bad = std::remove_if(s.points.begin(), s.points.end(),
                                [](const auto& pt) { return !(pt.second > 0); });
      p.non_positive += static_cast<size_t>(s.points.end() - bad);
      s.points.erase(bad, s.points.end());
    }
    std::stable_sort(s.points.begin(), s.points.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    if (!s.points.empty()) p.series.push_back(std::move(s));
  }
  return p;
}

// A series with more points than the plot has pixel columns is drawn from, in
// each column, its first, lowest, highest and last point: the same picture
// (every spike kept), a fraction of the file size.
std::vector<Pixel> thin_out(std::vector<Pixel> line) {
  const size_t limit = 4 * static_cast<size_t>(kPanelW - kLeft - kRight);
  if (line.size() <= limit) return line;
  std::vector<Pixel> out;
  out.reserve(limit + 4);
  for (size_t i = 0; i < line.size();) {
    const double column = std::floor(line[i].x);
    size_t j = i, lowest = i, highest = i;
    for (; j < line.size() && std::floor(line[j].x) == column; ++j) {
      if (line[j].y > line[lowest].y) lowest = j;  // screen y grows downwards
      if (line[j].y < line[highest].y) highest = j;
    }
    size_t keep[] = {i, std::min(lowest, highest), std::max(lowest, highest), j - 1};
    for (size_t k = 0; k < 4; ++k) {
      if (k == 0 || keep[k] != keep[k - 1]) out.push_back(line[keep[k]]);
    }
    i = j;
  }
  return out;
}

// Whether the segment a-b (a point when a == b) meets the box (Liang-Barsky).
bool segment_meets_box(Pixel a, Pixel b, double left, double top, double right, double bottom) {
  const double dx = b.x - a.x, dy = b.y - a.y;
  const double p[4] = {-dx, dx, -dy, dy};
  const double q[4] = {a.x - left, right - a.x, a.y - top, bottom - a.y};
  double t0 = 0, t1 = 1;
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;
    } else if (p[i] < 0) {
      t0 = std::max(t0, q[i] / p[i]);
    } else {
      t1 = std::min(t1, q[i] / p[i]);
    }
  }
  return t0 <= t1;
}

// At most n bytes of s, not ending inside a UTF-8 sequence.
std::string utf8_prefix(const std::string& s, size_t n) {
  while (n > 0 && n < s.size() && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

void draw_panel(draw::Figure& fig, const Panel& p, const Axis& x, double px, double py) {
  const double w = kPanelW - kLeft - kRight;
  const double h = kPanelH - kTop - kBottom;
  const double x0 = px + kLeft, y0 = py + kTop;

  fig.set_group(p.metric);
  fig.text(x0 + w / 2, py + 22, p.log_y ? p.metric + " (log scale)" : p.metric, kTitleFont, kInk,
           Anchor::middle, "title");

  auto sx = [&](double v) { return x0 + (v - x.lo) / (x.hi - x.lo) * w; };
  for (size_t i = 0; i < x.ticks.size(); ++i) {
    const double X = sx(x.ticks[i]);
    fig.line({X, y0}, {X, y0 + h}, kGrid, 1, "grid");
    fig.text(X, y0 + h + 16, x.labels[i], kTickFont, kInk, Anchor::middle, "tick", "x");
  }
  fig.text(x0 + w / 2, y0 + h + 36, "step", kTickFont, kInk, Anchor::middle, "label", "x");

  if (p.series.empty()) {
    // (With --log-y and no positive value the scale fell back to linear, so
    // an empty panel always means no finite value.)
    fig.stroke_rect(x0, y0, w, h, kFrame, 1, "frame");
    fig.text(x0 + w / 2, y0 + h / 2, "no finite values", kNoteFont, kFaint, Anchor::middle, "note");
    return;
  }

  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& s : p.series) {
    for (const auto& pt : s.points) {
      lo = std::min(lo, pt.second);
      hi = std::max(hi, pt.second);
    }
  }
  const Axis y = p.log_y ? plot_detail::log_axis(lo, hi) : plot_detail::linear_axis(lo, hi);
  auto ty = [&](double v) { return p.log_y ? std::log10(v) : v; };
  const double ty_lo = ty(y.lo), ty_hi = ty(y.hi);
  auto sy = [&](double v) { return y0 + h - (ty(v) - ty_lo) / (ty_hi - ty_lo) * h; };
  for (size_t i = 0; i < y.ticks.size(); ++i) {
    const double Y = sy(y.ticks[i]);
    fig.line({x0, Y}, {x0 + w, Y}, kGrid, 1, "grid");
    fig.text(x0 - 6, Y + 4, y.labels[i], kTickFont, kInk, Anchor::end, "tick", "y");
  }
  fig.stroke_rect(x0, y0, w, h, kFrame, 1, "frame");

  std::vector<std::vector<Pixel>> lines;
  for (const auto& s : p.series) {
    std::vector<Pixel> line;
    line.reserve(s.points.size());
    for (const auto& pt : s.points) line.push_back({sx(pt.first), sy(pt.second)});
    lines.push_back(thin_out(std::move(line)));
  }
  for (size_t k = 0; k < p.series.size(); ++k) {
    const Colour colour = Colour::hex(kColours[p.series[k].colour]);
    const std::string& split = p.series[k].split;
    fig.polyline(lines[k], colour, 1.5, "series", split);
    if (p.series[k].points.size() <= kMarkersUpTo) fig.dots(lines[k], 2.5, colour, "markers", split);
  }

  // The legend goes in the corner of the plot area that the fewest line
  // segments cross (top right on a tie: falling curves leave it empty).
  double longest = 0;
  std::vector<std::string> names;
  for (const auto& s : p.series) {
    names.push_back(s.split.size() > 40 ? utf8_prefix(s.split, 39) + "\xE2\x80\xA6" : s.split);
    longest = std::max(longest, draw::text_width(names.back(), kTickFont));
  }
  const double lw = 38 + longest;
  const double lh = 8 + 16 * static_cast<double>(p.series.size());
  const double corners[4][2] = {{x0 + w - lw - 6, y0 + 6},
                                {x0 + 6, y0 + 6},
                                {x0 + w - lw - 6, y0 + h - lh - 6},
                                {x0 + 6, y0 + h - lh - 6}};
  double lx = corners[0][0], ly = corners[0][1];
  size_t fewest = std::numeric_limits<size_t>::max();
  for (const auto& c : corners) {
    size_t covered = 0;
    for (const auto& line : lines) {
      for (size_t i = 0; i < line.size(); ++i) {
        const Pixel& a = line[i];
        const Pixel& b = line[i + 1 < line.size() ? i + 1 : i];
        if (segment_meets_box(a, b, c[0] - 8, c[1] - 8, c[0] + lw + 8, c[1] + lh + 8)) ++covered;
      }
    }
    if (covered < fewest) {
      fewest = covered;
      lx = c[0];
      ly = c[1];
    }
  }
  fig.fill_rect(lx, ly, lw, lh, Colour{1, 1, 1, 0.85}, "legend");
  fig.stroke_rect(lx, ly, lw, lh, Colour::hex("#cccccc"), 1, "legend");
  for (size_t i = 0; i < p.series.size(); ++i) {
    const double Y = ly + 12 + 16 * static_cast<double>(i);
    fig.line({lx + 6, Y}, {lx + 24, Y}, Colour::hex(kColours[p.series[i].colour]), 2, "legend key",
             p.series[i].split);
    fig.text(lx + 30, Y + 4, names[i], kTickFont, kInk, Anchor::start, "legend text",
             p.series[i].split);
  }

  std::string note;
  if (p.log_fallback) note = "linear scale: no positive values";
  if (p.non_positive > 0) note = msg(p.non_positive, " values <= 0 not shown");
  if (!note.empty()) fig.text(x0 + w, y0 + h + 36, note, kNoteFont, kFaint, Anchor::end, "note");
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

draw::Figure metrics_figure(const std::vector<MetricRecord>& records, const PlotOptions& options) {
  if (records.empty()) throw Error(msg(options.source, ": no records"));
  const std::vector<std::string> found = metric_names(records);
  if (found.empty()) {
    throw Error(msg(options.source, ": no metrics (no record has a number besides ",
                    "step, split and elapsed_s)"));
  }
  std::vector<std::string> metrics = options.metrics.empty() ? found : options.metrics;
  for (const auto& m : metrics) {
    if (std::find(found.begin(), found.end(), m) == found.end()) {
      throw Error(
          msg("no metric ", quote(m), " in ", options.source, " (found: ", join(found), ")"));
    }
  }

  std::vector<std::string> splits;
  double step_lo = std::numeric_limits<double>::infinity(), step_hi = -step_lo;
  bool integer_steps = true;
  for (const auto& r : records) {
    if (std::find(splits.begin(), splits.end(), r.split) == splits.end()) splits.push_back(r.split);
    step_lo = std::min(step_lo, r.step);
    step_hi = std::max(step_hi, r.step);
    integer_steps = integer_steps && r.step == std::floor(r.step);
  }
  const Axis x = plot_detail::linear_axis(step_lo, step_hi, 6, integer_steps);

  const size_t n = metrics.size();
  const size_t cols = n == 1 ? 1 : 2;
  const size_t rows = (n + cols - 1) / cols;
  draw::Figure fig(kPanelW * static_cast<double>(cols),
                   kHeaderH + kPanelH * static_cast<double>(rows));
  fig.text(12, 20, msg(options.source, " (", records.size(), " records)"), kHeaderFont, kInk,
           Anchor::start, "header");
  for (size_t i = 0; i < n; ++i) {
    Panel p = collect(records, splits, metrics[i], options.log_y);
    draw_panel(fig, p, x, kPanelW * static_cast<double>(i % cols),
               kHeaderH + kPanelH * static_cast<double>(i / cols));
  }
  return fig;
}
// ---------------------------------------------------------------------------
// The verb

namespace {

struct PlotVerbOptions {
  std::string input;
  std::string output;
  std::string format;
  std::vector<std::string> metrics;
  bool log_y = false;
};

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

struct Output {
  std::string path;  // "-": stdout
  draw::Format format;
};

// What to write: -o's file in its format (or --format's), or, by default, both
// pictures beside the input (metrics.jsonl -> metrics.png + metrics.svg).
std::vector<Output> outputs_of(const PlotVerbOptions& o) {
  std::optional<draw::Format> format;
  if (!o.format.empty()) format = o.format == "png" ? draw::Format::png : draw::Format::svg;
  if (o.output.empty()) {
    const std::string stem =
        ends_with(o.input, ".jsonl") ? o.input.substr(0, o.input.size() - 6) : o.input;
    std::vector<Output> out;
    for (draw::Format f : {draw::Format::png, draw::Format::svg}) {
      if (!format || *format == f) out.push_back({stem + (f == draw::Format::png ? ".png" : ".svg"), f});
    }
    return out;
  }
  if (o.output == "-") return {{"-", format.value_or(draw::Format::svg)}};
  const std::optional<draw::Format> by_name = draw::format_of(o.output);
  if (!by_name && !format) {
    throw UsageError(
        msg("-o ", quote(o.output), ": expected a .png or .svg file (or name the format with --format)"));
  }
  if (by_name && format && *by_name != *format) {
    throw UsageError(msg("--format ", o.format, " conflicts with -o ", quote(o.output)));
  }
  return {{o.output, format ? *format : *by_name}};
}

void check_writable(const std::string& output, const std::string& input) {
  std::error_code ec;
  if (output == input || std::filesystem::equivalent(output, input, ec)) {
    throw UsageError(msg("-o ", quote(output), " is the input file; choose another output"));
  }
  // The atomic write renames a new file over the path: over /dev/null or
  // /dev/stdout that would replace the device itself.
  const auto st = std::filesystem::status(output, ec);
  if (!ec && std::filesystem::exists(st) && !std::filesystem::is_regular_file(st)) {
    throw UsageError(msg(output, ": exists and is not a regular file (",
                         std::filesystem::is_directory(st) ? "a directory" : "a device or pipe",
                         "); name a file, or -o - for stdout"));
  }
}

int run_plot(const PlotVerbOptions& o) {
  PlotOptions options;
  options.source = o.input;
  options.log_y = o.log_y;
  for (const auto& raw : o.metrics) {
    std::string m = trim(raw);
    if (m.empty()) throw UsageError("--metrics: empty metric name (expected e.g. loss,lr)");
    if (std::find(options.metrics.begin(), options.metrics.end(), m) == options.metrics.end())
      options.metrics.push_back(m);
  }
  const std::vector<Output> outputs = outputs_of(o);
  for (const auto& out : outputs) {
    if (out.path != "-") check_writable(out.path, o.input);
  }

  const std::vector<MetricRecord> records = read_metrics_jsonl(o.input);
  const draw::Figure figure = metrics_figure(records, options);
  // Every picture is encoded before the first is written: a failure leaves none.
  std::vector<std::string> encoded;
  for (const auto& out : outputs) encoded.push_back(figure.encode(out.format));
  if (outputs[0].path == "-") {
    std::cout << encoded[0] << std::flush;
    if (!std::cout) throw Error(msg("cannot write the ", draw::format_name(outputs[0].format), " to stdout"));
    return 0;
  }
  std::vector<std::string> written;
  try {
    for (size_t i = 0; i < outputs.size(); ++i) {
      io::write_file_atomic(outputs[i].path, encoded[i]);
      written.push_back(outputs[i].path);
    }
  } catch (...) {
    for (const auto& w : written) std::remove(w.c_str());
    throw;
  }
  size_t panels = options.metrics.empty() ? metric_names(records).size() : options.metrics.size();
  std::string names;
  for (const auto& w : written) names += (names.empty() ? "" : " and ") + w;
  log::info("wrote ", names, " (", panels, panels == 1 ? " panel, " : " panels, ", records.size(),
            " records)");
  return 0;
}

}  // namespace

Runner add_plot(CLI::App& app) {
  auto o = std::make_shared<PlotVerbOptions>();
  auto* cmd = app.add_subcommand("plot", verb_info("plot").summary);
  cmd->add_option("metrics_file", o->input, "A metrics.jsonl file written by the trainer")
      ->required();
  cmd->add_option("-o,--output", o->output,
                  "The picture to write, .png or .svg (default: both, beside the input: "
                  "metrics.jsonl -> metrics.png + metrics.svg; - for stdout, SVG unless --format)");
  cmd->add_option("--format", o->format, "png or svg, whatever -o's name (default: by -o's name)")
      ->check(CLI::IsMember({"png", "svg"}));
  cmd->add_option("--metrics", o->metrics,
                  "Comma-separated metrics to draw, one panel each, in this order "
                  "(default: all, loss first)")
      ->delimiter(',');
  cmd->add_flag("--log-y", o->log_y, "Logarithmic y axes (values <= 0 are left out)");
  return [o] { return run_plot(*o); };
}

}  // namespace recast::cli
