#pragma once

// SIGINT and SIGTERM, process-wide. install() (first thing in main) hands both
// to one watcher thread (the handler only writes to a pipe), which can do what
// a signal handler may not (remove a directory tree):
//  - while a StopScope lives (the trainer), the first signal asks it to stop
//    at the next step boundary (checkpoint, exit 0) and a second one exits at
//    once (128 + signal);
//  - otherwise every registered temporary path (TempPath: the hidden temp file
//    of an atomic write, the temp directory of convert, a repack's new output)
//    is removed and the process exits 128 + signal (130 for SIGINT, 143 for
//    SIGTERM).
// Without install() (a library user, the in-process tests) a StopScope installs
// a plain handler for its lifetime and TempPaths are only bookkeeping.

#include <string>

namespace recast::signals {

void install();
bool installed();

class StopScope {
 public:
  StopScope();
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;
  bool stop_requested() const;
};

// Registers `path` for removal if the process is stopped by a signal before the
// TempPath is destroyed or released. Does not remove anything itself.
class TempPath {
 public:
  TempPath() = default;
  explicit TempPath(std::string path);
  ~TempPath();
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  void reset(std::string path);
  void release();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool armed_ = false;
};

}  // namespace recast::signals
