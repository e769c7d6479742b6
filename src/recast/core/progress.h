#pragma once

// Progress for long work. On a terminal: one redrawn line
//   label  [#######.......]  45%  450/1000  12.3 it/s  ETA 00:44  loss=2.31
// Elsewhere (a log file, CI): a plain line every `plain_interval` seconds and
// at the end, so logs stay readable.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace recast {

class ProgressBar {
 public:
  struct Options {
    std::string label;
    std::string unit = "it";
    FILE* stream = stderr;         // null: draw nothing
    int tty = -1;                  // -1: detect with isatty(stream)
    double redraw_interval = 0.1;  // seconds, terminal mode
    double plain_interval = 10.0;  // seconds, plain-line mode
  };
  using Clock = std::chrono::steady_clock;

  ProgressBar(int64_t total, Options options);
  ~ProgressBar();  // finishes if not yet finished

  // Advances by `n` and sets the metrics shown after the bar (name, value).
  void update(int64_t n = 1, std::vector<std::pair<std::string, double>> metrics = {});
  // Jumps to an absolute position (e.g. after resuming).
  void set_position(int64_t done);
  void finish();

  // The text of the current line (without terminal control), for tests.
  std::string render(Clock::time_point now) const;
  static std::string format_duration(double seconds);

  // Tests drive time explicitly.
  void set_clock_for_testing(Clock::time_point start) { start_ = last_draw_ = start; }
  void update_at(Clock::time_point now, int64_t n,
                 std::vector<std::pair<std::string, double>> metrics);

 private:
  void draw(Clock::time_point now, bool final);

  int64_t total_;
  int64_t done_ = 0;
  int64_t start_done_ = 0;
  Options options_;
  bool tty_;
  bool finished_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
  std::vector<std::pair<std::string, double>> metrics_;
};

}  // namespace recast
