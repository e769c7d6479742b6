// The command line shared by `recast` and `recast-engine`: global options,
// parsing, and the mapping of errors to exit codes (0 success, 1 failure,
// 2 usage error). Every error is one line on stderr: "recast: error: <what>".

#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/file.h"
#include "recast/core/version.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <map>
#include <new>

namespace recast::cli {

CLI::Validator number_in(double lo, double hi, bool open_lo, bool integer) {
  auto describe = [=] {
    std::ostringstream os;
    os << (integer ? "an integer in " : "a finite number in ") << (open_lo ? "(" : "[") << lo << ", "
       << hi << "]";
    return os.str();
  };
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(text.c_str(), &end);
        const bool parsed = end != text.c_str() && *end == '\0' && errno != ERANGE;
        const bool ok = parsed && std::isfinite(v) && (open_lo ? v > lo : v >= lo) && v <= hi &&
                        (!integer || std::floor(v) == v);
        return ok ? std::string() : "expected " + describe() + ", found " + text;
      },
      describe());
}
void check_output_dir(const std::string& path, const std::string& option, bool must_be_empty) {
  if (path.empty()) throw UsageError(msg(option, ": expected a directory path, found ''"));
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto link = fs::symlink_status(path, ec);
  if (!ec && fs::exists(link)) {
    const std::string problem = io::path_problem(path);
    if (!problem.empty()) throw UsageError(msg(option, " ", quote(path), ": ", problem));
    if (!io::is_directory(path)) {
      throw UsageError(msg(option, " ", quote(path), ": exists and is a file; expected a directory"));
    }
    if (must_be_empty && !fs::is_empty(path, ec)) {
      throw UsageError(msg(option, " ", quote(path), ": exists and is not empty"));
    }
    return;
  }
  fs::path parent = fs::path(path).parent_path();
  if (parent.empty()) parent = ".";
  if (!io::is_directory(parent.string())) {
    throw UsageError(msg(option, " ", quote(path), ": its parent ", quote(parent.string()),
                         io::path_problem(parent.string()).empty() ? " is not a directory"
                                                                    : " does not exist"));
  }
}

namespace {

int fail(int code, const std::string& message) {
  std::fprintf(stderr, "recast: error: %s\n", Error(message).what());
  return code;
}

// LibTorch's c10::Error appends a backtrace after the first line.
std::string first_line(const char* text) {
  std::string s(text);
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string version_text() {
  std::string text = msg("recast ", RECAST_VERSION);
  if (*RECAST_GIT_REVISION) text += msg(" (", RECAST_GIT_REVISION, ")");
  text += msg(", LibTorch ", RECAST_BUILT_WITH_TORCH,
              RECAST_BUILT_WITH_CUDA_KERNELS ? ", CUDA kernels" : ", CPU only");
  return text;
}

}  // namespace

const VerbInfo& verb_info(const std::string& name) {
  for (const auto& v : kVerbs) {
    if (name == v.name) return v;
  }
  throw Error(msg("internal: verb ", quote(name), " is not in the verb table"));
}

int run_cli(int argc, char** argv, const std::vector<VerbImpl>& impls) {
  CLI::App app{
      "recast: recast the layers of pretrained networks into other forms, "
      "fine-tune them, and measure the result.",
      "recast"};
  app.set_version_flag("--version", version_text());
  app.set_help_all_flag("--help-all", "Show help for every verb");
  app.fallthrough();
  std::string log_level;
  app.add_option("--log-level", log_level, "debug, info, warn, error or off (default info)");
  bool verbose = false;
  bool quiet = false;
  app.add_flag("-v,--verbose", verbose, "Same as --log-level debug");
  app.add_flag("-q,--quiet", quiet, "Same as --log-level warn");
  app.footer("Run 'recast VERB --help' for a verb's options.");

  std::map<CLI::App*, Runner> runners;
  for (const auto& verb : kVerbs) {
    const VerbImpl* impl = nullptr;
    for (const auto& i : impls) {
      if (verb.name == std::string(i.name)) impl = &i;
    }
    if (impl != nullptr) {
      Runner runner = impl->add(app);
      runners[app.get_subcommand(verb.name)] = std::move(runner);
    } else {
      CLI::App* sub = app.add_subcommand(verb.name, verb.summary);
      sub->allow_extras();
      runners[sub] = [name = std::string(verb.name)]() -> int {
        throw Error(msg("verb '", name, "' runs in recast-engine, which could not be started"));
      };
    }
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string where = "recast";
    for (CLI::App* sub : app.get_subcommands()) where += " " + sub->get_name();
    return fail(2, msg(e.what(), " (see '", where, " --help')"));
  }

  try {
    auto level_of = [](const std::string& where, const std::string& name) {
      try {
        return log::parse_level(name);
      } catch (const UsageError& e) {
        throw UsageError(msg(where, ": ", e.what()));
      }
    };
    if (const char* env = std::getenv("RECAST_LOG_LEVEL")) level_of("RECAST_LOG_LEVEL", env);
    // Ranks other than 0 of a data-parallel run say only warnings and errors
    // unless asked for more: rank 0 speaks for the job.
    if (const char* r = std::getenv("RANK"); r && *r && std::strcmp(r, "0") != 0 &&
                                              log_level.empty() && !verbose) {
      log::set_level(log::Level::Warn);
    }
    if (!log_level.empty()) log::set_level(level_of("--log-level", log_level));
    if (verbose) log::set_level(log::Level::Debug);
    if (quiet) log::set_level(log::Level::Warn);
    auto chosen = app.get_subcommands();
    if (chosen.empty()) {
      std::string names;
      for (const auto& verb : kVerbs) names += (names.empty() ? "" : ", ") + std::string(verb.name);
      return fail(2, msg("a verb is required (", names, "); see 'recast --help'"));
    }
    return runners.at(chosen.front())();
  } catch (const UsageError& e) {
    return fail(2, e.what());
  } catch (const Error& e) {
    return fail(1, e.what());
  } catch (const std::bad_alloc&) {
    return fail(1, "out of memory");
  } catch (const std::exception& e) {
    // Not one of ours (LibTorch, the standard library, a JSON parser): say
    // which verb it came from, and call an allocation failure by its name.
    std::string where = "recast";
    for (CLI::App* sub : app.get_subcommands()) where += " " + sub->get_name();
    const std::string what = first_line(e.what());
    const bool oom = what.find("can't allocate memory") != std::string::npos ||
                     what.find("out of memory") != std::string::npos ||
                     what.find("alloc_cpu") != std::string::npos;
    if (oom) return fail(1, msg(where, ": out of memory (", what, ")"));
    return fail(1, msg(where, ": ", what));
  }
}

}  // namespace recast::cli
