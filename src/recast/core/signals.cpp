#include "recast/core/signals.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <thread>

namespace recast::signals {
namespace {

std::atomic<bool> g_installed{false};
std::atomic<int> g_scopes{0};
std::atomic<int> g_received{0};

void leave_now(int sig, bool in_scope) {
  static const char plain[] = "\nrecast: interrupted\n";
  static const char second[] = "\nrecast: second signal, exiting without a checkpoint\n";
  ssize_t ignored = in_scope ? ::write(STDERR_FILENO, second, sizeof(second) - 1)
                             : ::write(STDERR_FILENO, plain, sizeof(plain) - 1);
  (void)ignored;
  ::_exit(128 + sig);
}

// One signal: inside a scope, the first asks the loop to stop; anything else
// leaves at once. Safe in a signal handler (atomics, write, _exit only).
void on_signal(int sig) {
  if (g_scopes.load() == 0) leave_now(sig, false);
  if (g_received.fetch_add(1) >= 1) leave_now(sig, true);
}

extern "C" void handler(int sig) { on_signal(sig); }

}  // namespace

void install() {
  if (g_installed.exchange(true)) return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // inherited by every later thread
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) == 0) on_signal(sig);
    }
  }).detach();
}

StopScope::StopScope() {
  g_received = 0;
  if (g_scopes.fetch_add(1) == 0 && !g_installed.load()) {
    // Without install() (a library user's process): a plain handler.
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  }
}

StopScope::~StopScope() {
  if (g_scopes.fetch_sub(1) == 1 && !g_installed.load()) {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
  }
}

bool StopScope::stop_requested() const { return g_received.load() > 0; }

}  // namespace recast::signals
