#pragma once

// What the training verbs' process tests share (train_cli_test.cpp,
// dist_test.cpp): a corpus of pseudo-English, a child process running recast
// (with extra environment variables), and waiting for a run's progress in its
// metrics.jsonl.

#include "process_util.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace recast::testing {

// `docs` small documents of at least `chars` characters each, drawn from a
// fixed word list by a seeded LCG: the same every time.
inline void write_corpus(const std::string& dir, int docs = 40, size_t chars = 1500, uint64_t seed = 12345) {
  const char* words[] = {"the ",  "union ", "is ",  "strong ", "and ",     "we ",
                         "shall ", "not ",  "fail. ", "our ",  "people ", "endure.\n"};
  uint64_t x = seed;
  for (int d = 0; d < docs; ++d) {
    std::string text;
    while (text.size() < chars) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      text += words[(x >> 33) % 12];
    }
    write_bytes(dir + "/doc" + std::to_string(d) + ".txt", text);
  }
}

// Sets the value after option `name` in `args`.
inline void set_arg(std::vector<std::string>& args, const std::string& name, const std::string& value) {
  auto it = std::find(args.begin(), args.end(), name);
  ASSERT_NE(it, args.end()) << name;
  *(it + 1) = value;
}

// A child process running recast with stdout/stderr in `log`; `env` adds
// KEY=VALUE variables to its environment.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& log, const std::vector<std::string>& env = {}) {
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      for (const auto& kv : env) ::putenv(const_cast<char*>(kv.c_str()));
      std::vector<char*> argv;
      std::string bin = RECAST_BINARY;
      argv.push_back(bin.data());
      std::vector<std::string> copy = args;
      for (auto& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  pid_t pid() const { return pid_; }
  void signal(int sig) { ::kill(pid_, sig); }
  // Exit code, or 128 + signal.
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

// Highest "step" in OUT/metrics.jsonl so far (0 when none).
inline int64_t logged_step(const std::string& out) {
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  int64_t step = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step")) step = std::max<int64_t>(step, j["step"].get<int64_t>());
  }
  return step;
}

inline bool wait_for_step(const std::string& out, int64_t step, int seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (logged_step(out) >= step) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

}  // namespace recast::testing
