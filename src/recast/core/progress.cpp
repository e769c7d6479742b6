#include "recast/core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace recast {

ProgressBar::ProgressBar(int64_t total, Options options)
    : total_(std::max<int64_t>(total, 0)), options_(std::move(options)) {
  tty_ = options_.tty >= 0 ? options_.tty != 0
                           : options_.stream != nullptr && ::isatty(::fileno(options_.stream)) != 0;
  // `recast launch` relays a rank's output through a pipe and says whether
  // its own terminal is one (rank 0 draws the bar there).
  if (const char* e = std::getenv("RECAST_PROGRESS_TTY"); options_.tty < 0 && e && *e) {
    tty_ = std::strcmp(e, "1") == 0;
  }
  start_ = last_draw_ = Clock::now();
}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int64_t n, std::vector<std::pair<std::string, double>> metrics) {
  update_at(Clock::now(), n, std::move(metrics));
}

void ProgressBar::update_at(Clock::time_point now, int64_t n,
                            std::vector<std::pair<std::string, double>> metrics) {
  done_ += n;
  if (!metrics.empty()) metrics_ = std::move(metrics);
  double since = std::chrono::duration<double>(now - last_draw_).count();
  double interval = tty_ ? options_.redraw_interval : options_.plain_interval;
  if (since >= interval) draw(now, false);
}

void ProgressBar::set_position(int64_t done) {
  done_ = done;
  start_done_ = done;
  start_ = Clock::now();
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(Clock::now(), true);
}

std::string ProgressBar::format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

std::string ProgressBar::render(Clock::time_point now) const {
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_ - start_done_) / elapsed : 0.0;
  std::string line = options_.label.empty() ? "" : options_.label + "  ";
  char buf[160];
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    constexpr int kWidth = 24;
    int filled = static_cast<int>(frac * kWidth);
    line += "[" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "]";
    std::snprintf(buf, sizeof buf, " %3d%%  %lld/%lld", static_cast<int>(frac * 100),
                  static_cast<long long>(done_), static_cast<long long>(total_));
    line += buf;
  } else {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(done_));
    line += buf;
  }
  std::snprintf(buf, sizeof buf, "  %.3g %s/s", rate, options_.unit.c_str());
  line += buf;
  if (total_ > 0) {
    double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : NAN;
    line +=
        (done_ >= total_ ? "  took " + format_duration(elapsed) : "  ETA " + format_duration(eta));
  }
  for (const auto& [name, value] : metrics_) {
    // Large values (throughputs) as whole numbers, the rest with 4 digits.
    if (std::fabs(value) >= 1e4 && std::fabs(value) < 1e12) {
      std::snprintf(buf, sizeof buf, "  %s=%.0f", name.c_str(), value);
    } else {
      std::snprintf(buf, sizeof buf, "  %s=%.4g", name.c_str(), value);
    }
    line += buf;
  }
  return line;
}

void ProgressBar::draw(Clock::time_point now, bool final) {
  last_draw_ = now;
  if (options_.stream == nullptr) return;  // silent (a data-parallel run's other ranks)
  std::string line = render(now);
  if (tty_) {
    std::fprintf(options_.stream, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(options_.stream, "%s\n", line.c_str());
  }
  std::fflush(options_.stream);
}

}  // namespace recast
