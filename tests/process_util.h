#pragma once

// Running the recast executable from tests: exit code, signal, stdout and
// stderr, and the one-line error contract.

#include "test_util.h"

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace recast::testing {

struct Result {
  int code = -1;  // exit status; -1 when killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// `env`: extra KEY=VALUE variables for the process.
inline Result run(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  TempDir io_dir;
  std::string cmd;
  if (!env.empty()) {
    cmd = "env";
    for (const auto& kv : env) cmd += " " + shell_quote(kv);
    cmd += " ";
  }
  cmd += shell_quote(RECAST_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " >" + io_dir.file("out") + " 2>" + io_dir.file("err") + " </dev/null";
  int status = std::system(cmd.c_str());
  Result r;
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  // sh reports a child killed by signal N as exit status 128 + N.
  if (r.code > 128) r.signal = r.code - 128;
  r.out = read_bytes(io_dir.file("out"));
  r.err = read_bytes(io_dir.file("err"));
  return r;
}

inline void expect_one_line_error(const Result& r, int code, const std::string& expected) {
  EXPECT_EQ(r.code, code) << r.err;
  EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal;
  EXPECT_EQ(r.err.rfind("recast: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
}

}  // namespace recast::testing
