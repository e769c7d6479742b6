// `recast`: the front executable. It does not link LibTorch, so --help,
// --version and `inspect` answer at once; verbs that need LibTorch are handed
// to `recast-engine` in the same directory (or $RECAST_ENGINE) by exec, with
// the same arguments, so exit codes and output are the engine's own.

#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/core/signals.h"
#include "recast/io/sentencepiece_server.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

// The verb is the first argument that is neither an option nor the value of
// --log-level (the one global option that takes a value).
const recast::cli::VerbInfo* find_verb(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--log-level") {
      ++i;
      continue;
    }
    if (!a.empty() && a[0] == '-') continue;
    for (const auto& v : recast::cli::kVerbs) {
      if (a == v.name) return &v;
    }
    return nullptr;
  }
  return nullptr;
}

std::string engine_path() {
  if (const char* env = std::getenv("RECAST_ENGINE")) return env;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ((ec ? std::filesystem::path(".") : self.parent_path()) / "recast-engine").string();
}

}  // namespace

int main(int argc, char** argv) {
  // The sentencepiece library's process (io/sentencepiece.h): not a verb.
  if (argc == 2 && std::strcmp(argv[1], "__sentencepiece") == 0) return recast::io::sentencepiece_server();
  const recast::cli::VerbInfo* verb = find_verb(argc, argv);
  if (verb != nullptr && verb->needs_torch) {
    std::string engine = engine_path();
    ::execv(engine.c_str(), argv);
    std::fprintf(stderr, "recast: error: cannot run %s (%s); it must sit beside recast\n",
                 engine.c_str(), std::strerror(errno));
    return 1;
  }
  recast::signals::install();
  if (verb != nullptr && std::strcmp(verb->name, "launch") == 0) argc = recast::cli::split_launch_command(argc, argv);
  return recast::cli::run_cli(
      argc, argv,
      {{"inspect", recast::cli::add_inspect}, {"plot", recast::cli::add_plot}, {"launch", recast::cli::add_launch}});
}
