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
struct sigaction g_old_int {}, g_old_term {};

// Outside a scope: end the process the way the default disposition would
// (killed by the signal, as a shell expects). Async-signal-safe calls only.
[[noreturn]] void die_by(int sig) {
  ::signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(sig);
  ::_exit(128 + sig);  // not reached
}

// The second signal inside a scope: leave now. Checkpoints are renamed into
// place whole, so the last one stays intact; a half-built temporary one is
// removed on the next start.
[[noreturn]] void leave_now(int sig) {
  static const char text[] = "\nrecast: second signal, exiting without a checkpoint\n";
  ssize_t ignored = ::write(STDERR_FILENO, text, sizeof(text) - 1);
  (void)ignored;
  ::_exit(128 + sig);
}

// Inside a scope, the first signal asks the loop to stop.
void on_signal(int sig) {
  if (g_scopes.load() == 0) die_by(sig);
  if (g_received.fetch_add(1) >= 1) leave_now(sig);
}

extern "C" void handler(int sig) { on_signal(sig); }

}  // namespace

void install() {
  if (g_installed.exchange(true)) return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  // A thread that already existed (a library's, started before main) keeps
  // its mask; the same handler serves a signal delivered there.
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
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
    // Without install() (a library user's process): a plain handler for the
    // scope's lifetime, the previous ones restored after it.
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &g_old_int);
    sigaction(SIGTERM, &sa, &g_old_term);
  }
}

StopScope::~StopScope() {
  if (g_scopes.fetch_sub(1) == 1 && !g_installed.load()) {
    sigaction(SIGINT, &g_old_int, nullptr);
    sigaction(SIGTERM, &g_old_term, nullptr);
  }
}

bool StopScope::stop_requested() const { return g_received.load() > 0; }

}  // namespace recast::signals
