#include "recast/core/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

namespace recast::signals {
namespace {

std::atomic<bool> g_installed{false};
std::atomic<int> g_scopes{0};
std::atomic<int> g_stop_signals{0};

std::mutex& temps_mutex() {
  static std::mutex m;
  return m;
}
std::multiset<std::string>& temps() {
  static std::multiset<std::string> t;
  return t;
}

void write_stderr(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

// A second signal while training: leave now. Checkpoints are renamed into
// place whole, so the last one stays intact; a half-built temporary one is
// removed on the next start.
void second_signal(int sig) {
  write_stderr("\nrecast: second signal, exiting without a checkpoint\n");
  ::_exit(128 + sig);
}

void remove_temps_and_exit(int sig) {
  int removed = 0;
  {
    std::lock_guard<std::mutex> lock(temps_mutex());
    for (const auto& path : temps()) {
      // The main thread keeps running meanwhile and may still be adding files
      // to a directory being removed: try a few times.
      for (int attempt = 0; attempt < 5; ++attempt) {
        std::error_code ec;
        const auto n = std::filesystem::remove_all(path, ec);
        if (!ec) {
          removed += n > 0 ? 1 : 0;
          break;
        }
      }
    }
  }
  char text[160];
  std::snprintf(text, sizeof text, "\nrecast: interrupted by %s; removed %d unfinished output%s\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM", removed, removed == 1 ? "" : "s");
  write_stderr(text);
  ::_exit(128 + sig);
}

// The handler only writes the signal's number to a pipe (async-signal-safe);
// the watcher thread reads it and does the work. A handler rather than a
// blocked mask and sigwait: libraries start threads before main (OpenBLAS's
// pool does), and a process signal may be delivered to any of them.
int g_pipe[2] = {-1, -1};

extern "C" void on_signal_to_pipe(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(g_pipe[1], &byte, 1);
  (void)ignored;
  errno = saved;
}

void watch() {
  for (;;) {
    unsigned char byte = 0;
    const ssize_t n = ::read(g_pipe[0], &byte, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return;
    const int sig = byte;
    if (g_scopes.load() > 0) {
      if (g_stop_signals.fetch_add(1) >= 1) second_signal(sig);
      continue;
    }
    remove_temps_and_exit(sig);
  }
}

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signals.fetch_add(1) >= 1) second_signal(sig);
}

void set_handler(void (*handler)(int), struct sigaction* old_int, struct sigaction* old_term) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, old_int);
  sigaction(SIGTERM, &sa, old_term);
}

}  // namespace

void install() {
  if (g_installed.exchange(true)) return;
  if (::pipe2(g_pipe, O_CLOEXEC) != 0) {
    g_installed = false;  // StopScope's plain handler still works
    return;
  }
  std::thread(watch).detach();
  set_handler(on_signal_to_pipe, nullptr, nullptr);
}

bool installed() { return g_installed.load(); }

// Without the watcher: a plain handler for the scope's lifetime.
struct FallbackHandler {
  struct sigaction old_int {}, old_term {};
};
static FallbackHandler g_fallback;

StopScope::StopScope() {
  g_stop_signals = 0;
  if (g_scopes.fetch_add(1) == 0 && !installed()) {
    set_handler(on_stop_signal, &g_fallback.old_int, &g_fallback.old_term);
  }
}

StopScope::~StopScope() {
  if (g_scopes.fetch_sub(1) == 1 && !installed()) {
    sigaction(SIGINT, &g_fallback.old_int, nullptr);
    sigaction(SIGTERM, &g_fallback.old_term, nullptr);
  }
}

bool StopScope::stop_requested() const { return g_stop_signals.load() > 0; }

TempPath::TempPath(std::string path) { reset(std::move(path)); }

TempPath::~TempPath() { release(); }

void TempPath::reset(std::string path) {
  release();
  path_ = std::move(path);
  std::lock_guard<std::mutex> lock(temps_mutex());
  temps().insert(path_);
  armed_ = true;
}

void TempPath::release() {
  if (!armed_) return;
  std::lock_guard<std::mutex> lock(temps_mutex());
  auto it = temps().find(path_);
  if (it != temps().end()) temps().erase(it);
  armed_ = false;
}

}  // namespace recast::signals
