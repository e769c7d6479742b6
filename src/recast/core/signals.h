#pragma once

// SIGINT / SIGTERM for a multi-threaded process. install(), called first thing
// in main before any thread exists, blocks both signals in every thread and
// hands them to one watcher thread (sigwait), so no compute thread (BLAS,
// OpenMP, LibTorch's pools) is ever interrupted in the middle of a kernel.
// Outside a StopScope a signal ends the process at once (exit 128 + signal);
// inside one (a training loop) the first sets the stop flag and the second
// ends the process at once.

namespace recast::signals {

void install();

class StopScope {
 public:
  StopScope();
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;
  bool stop_requested() const;
};

}  // namespace recast::signals
