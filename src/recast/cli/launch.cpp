// recast launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A
//               --master-port P] VERB ARGS...
//   torchrun's job for machines without Python: starts N local ranks of
//   `recast VERB ARGS...` with torchrun's variables (RANK, LOCAL_RANK,
//   WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,
//   TORCHELASTIC_RUN_ID), prefixes each line they print with "[rank R] ",
//   forwards SIGINT / SIGTERM to them, and exits with the first non-zero exit
//   code among them (128 + the signal for a rank killed by one), ending the
//   others (SIGTERM, then SIGKILL after --grace seconds). Ranks die with the
//   launcher (PR_SET_PDEATHSIG). Only rank 0 draws a progress bar, and only
//   when the launcher's own stderr is a terminal.

#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/core/log.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace recast::cli {
namespace {

struct LaunchCli {
  int nproc = 1, nnodes = 1, node_rank = 0, master_port = 29500;
  std::string master_addr = "127.0.0.1", run_id;
  double grace = 5.0;
  std::vector<std::string> command;
};

volatile std::sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

// One child's output stream, relayed with "[rank R] " at the start of every
// line (after '\n', and after '\r' so that a redrawn progress bar keeps it).
struct Relay {
  int fd = -1;
  int out = STDOUT_FILENO;
  std::string prefix;
  bool at_line_start = true;

  void pump() {
    char buf[65536];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) {
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
      ::close(fd);
      fd = -1;
      return;
    }
    std::string text;
    text.reserve(static_cast<size_t>(n) + 64);
    for (ssize_t i = 0; i < n; ++i) {
      if (at_line_start) text += prefix, at_line_start = false;
      text += buf[i];
      if (buf[i] == '\n' || buf[i] == '\r') at_line_start = true;
    }
    for (size_t off = 0; off < text.size();) {
      const ssize_t w = ::write(out, text.data() + off, text.size() - off);
      if (w < 0) {
        if (errno == EINTR) continue;
        return;  // our own output is gone: keep draining the child
      }
      off += static_cast<size_t>(w);
    }
  }
};

struct Rank {
  pid_t pid = -1;
  int rank = 0;
  Relay out, err;
  bool exited = false;
  int code = 0;
};

std::string self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error(msg("launch: cannot find the recast executable (/proc/self/exe: ", ec.message(), ")"));
  return p.string();
}

Rank start_rank(const LaunchCli& o, const std::string& exe, int local_rank, bool draw_bar) {
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw Error(msg("launch: pipe: ", std::strerror(errno)));
  }
  Rank r;
  r.rank = o.node_rank * o.nproc + local_rank;
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(msg("launch: fork: ", std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl
    ::setpgid(0, 0);  // a terminal's Ctrl-C reaches the launcher alone, which forwards it once
    ::dup2(out_pipe[1], STDOUT_FILENO);
    ::dup2(err_pipe[1], STDERR_FILENO);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const int world = o.nnodes * o.nproc;
    auto set = [](const char* k, const std::string& v) { ::setenv(k, v.c_str(), 1); };
    set("RANK", std::to_string(r.rank));
    set("LOCAL_RANK", std::to_string(local_rank));
    set("WORLD_SIZE", std::to_string(world));
    set("LOCAL_WORLD_SIZE", std::to_string(o.nproc));
    set("GROUP_RANK", std::to_string(o.node_rank));
    set("MASTER_ADDR", o.master_addr);
    set("MASTER_PORT", std::to_string(o.master_port));
    set("TORCHELASTIC_RUN_ID", o.run_id);
    set("RECAST_PROGRESS_TTY", draw_bar ? "1" : "0");
    std::vector<char*> argv;
    std::string argv0 = exe;
    argv.push_back(argv0.data());
    std::vector<std::string> args = o.command;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    std::fprintf(stderr, "recast: error: launch: cannot run %s: %s\n", exe.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  r.pid = pid;
  const std::string prefix = msg("[rank ", r.rank, "] ");
  r.out = Relay{out_pipe[0], STDOUT_FILENO, prefix};
  r.err = Relay{err_pipe[0], STDERR_FILENO, prefix};
  return r;
}

int run_launch(const LaunchCli& o) {
  if (o.command.empty()) {
    throw UsageError("launch: expected a verb and its arguments, as in 'recast launch --nproc-per-node 2 pretrain ...'");
  }
  if (o.node_rank >= o.nnodes) {
    throw UsageError(msg("--node-rank ", o.node_rank, ": expected below --nnodes ", o.nnodes));
  }
  const std::string& verb = o.command.front();
  if (verb != "pretrain" && verb != "finetune" && verb != "convert") {
    throw UsageError(msg("launch: ", quote(verb), " does not train; expected pretrain, finetune or convert"));
  }
  LaunchCli opts = o;
  if (opts.run_id.empty()) opts.run_id = msg("recast-launch-", ::getpid());
  const std::string exe = self_exe();
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGCHLD, SIG_DFL);  // an inherited SIG_IGN would reap the ranks before waitpid sees them
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  std::vector<Rank> ranks;
  for (int i = 0; i < o.nproc; ++i) ranks.push_back(start_rank(opts, exe, i, tty && opts.node_rank == 0 && i == 0));
  log::info("launch: ", o.nproc, " rank(s) of ", o.nnodes * o.nproc, " on this node (node ", o.node_rank,
            "), rendezvous at ", o.master_addr, ":", o.master_port);

  int first_failure = 0;
  bool ending = false;
  std::chrono::steady_clock::time_point kill_at{};
  auto send_all = [&](int sig) {
    for (auto& r : ranks) {
      if (!r.exited) ::kill(r.pid, sig);
    }
  };
  for (;;) {
    if (g_signal != 0) {
      const int sig = g_signal;
      g_signal = 0;
      log::info("launch: forwarding ", sig == SIGINT ? "SIGINT" : "SIGTERM", " to the ranks");
      send_all(sig);
    }
    std::vector<pollfd> fds;
    std::vector<Relay*> relays;
    for (auto& r : ranks) {
      for (Relay* rel : {&r.out, &r.err}) {
        if (rel->fd >= 0) fds.push_back({rel->fd, POLLIN, 0}), relays.push_back(rel);
      }
    }
    if (!fds.empty()) {
      const int n = ::poll(fds.data(), fds.size(), 100);
      if (n > 0) {
        for (size_t i = 0; i < fds.size(); ++i) {
          if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) relays[i]->pump();
        }
      }
    } else {
      ::usleep(20000);
    }
    bool all_done = true;
    for (auto& r : ranks) {
      if (r.exited) continue;
      int status = 0;
      const pid_t w = ::waitpid(r.pid, &status, WNOHANG);
      if (w < 0 && errno == ECHILD) {  // already reaped elsewhere: its code is unknown
        r.exited = true;
        continue;
      }
      if (w == r.pid) {
        r.exited = true;
        r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r.code != 0 && first_failure == 0) {
          first_failure = r.code;
          log::error("launch: rank ", r.rank, " exited with ", r.code,
                     WIFSIGNALED(status) ? msg(" (", ::strsignal(WTERMSIG(status)), ")") : "",
                     "; ending the other ranks");
          ending = true;
          send_all(SIGTERM);
          kill_at = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(o.grace * 1000));
        }
      } else {
        all_done = false;
      }
    }
    if (ending && std::chrono::steady_clock::now() >= kill_at) send_all(SIGKILL);
    if (all_done) {
      // What is left in the pipes; a grandchild that kept them open (the
      // sentencepiece helper) gets a second at most.
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      for (auto& r : ranks) {
        for (Relay* rel : {&r.out, &r.err}) {
          while (rel->fd >= 0 && std::chrono::steady_clock::now() < until) {
            pollfd p{rel->fd, POLLIN, 0};
            if (::poll(&p, 1, 50) > 0) rel->pump();
          }
          if (rel->fd >= 0) ::close(rel->fd), rel->fd = -1;
        }
      }
      break;
    }
  }
  return first_failure;
}

}  // namespace

Runner add_launch(CLI::App& app) {
  auto o = std::make_shared<LaunchCli>();
  auto* cmd = app.add_subcommand("launch", verb_info("launch").summary);
  cmd->add_option("--nproc-per-node", o->nproc, "Ranks to start on this node")
      ->required()
      ->check(integer_in(1, 1024));
  cmd->add_option("--nnodes", o->nnodes, "Nodes in the job (default 1)")->check(integer_in(1, 100000));
  cmd->add_option("--node-rank", o->node_rank, "This node's index (default 0)")->check(integer_in(0, 100000));
  cmd->add_option("--master-addr", o->master_addr, "Rank 0's host (default 127.0.0.1)");
  cmd->add_option("--master-port", o->master_port, "Rank 0's rendezvous port (default 29500)")
      ->check(integer_in(1, 65535));
  cmd->add_option("--run-id", o->run_id, "TORCHELASTIC_RUN_ID for the ranks (default recast-launch-PID)");
  cmd->add_option("--grace", o->grace, "Seconds between SIGTERM and SIGKILL when a rank fails (default 5)")
      ->check(number_in(0, 3600));
  cmd->footer("VERB ARGS...: the command each rank runs (pretrain, finetune or convert) and its options");
  return [o] {
    o->command = launch_command();
    return run_launch(*o);
  };
}

namespace {
std::vector<std::string>& command_store() {
  static std::vector<std::string> command;
  return command;
}
}  // namespace

int split_launch_command(int argc, char** argv) {
  int i = 1;
  while (i < argc && std::string(argv[i]) != "launch") ++i;
  for (++i; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.empty() || a[0] != '-') break;  // the verb
    if (a == "-h" || a == "--help" || a == "--help-all" || a == "-v" || a == "--verbose" || a == "-q" ||
        a == "--quiet" || a.find('=') != std::string::npos) {
      continue;  // flags
    }
    ++i;  // every other option of launch takes a value
  }
  command_store().assign(argv + std::min(i, argc), argv + argc);
  return std::min(i, argc);
}

const std::vector<std::string>& launch_command() { return command_store(); }

}  // namespace recast::cli
