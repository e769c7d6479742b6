#include "recast/core/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace recast::log {
namespace {

Level initial_level() {
  const char* env = std::getenv("RECAST_LOG_LEVEL");
  if (env == nullptr) return Level::Info;
  try {
    return parse_level(env);
  } catch (const Error&) {
    return Level::Info;
  }
}

std::atomic<Level>& current() {
  static std::atomic<Level> level{initial_level()};
  return level;
}

std::mutex& output_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

void set_level(Level level) {
  current().store(level);
}
Level level() {
  return current().load();
}
bool enabled(Level level) {
  return level >= current().load() && level != Level::Off;
}

Level parse_level(std::string_view name) {
  if (name == "debug") return Level::Debug;
  if (name == "info") return Level::Info;
  if (name == "warn" || name == "warning") return Level::Warn;
  if (name == "error") return Level::Error;
  if (name == "off") return Level::Off;
  throw UsageError(
      msg("unknown log level ", quote(name), " (expected debug, info, warn, error or off)"));
}

void write(Level level, const std::string& message) {
  static const char* const kPrefix[] = {"debug: ", "", "warning: ", "error: "};
  std::lock_guard<std::mutex> lock(output_mutex());
  std::fprintf(stderr, "recast: %s%s\n", kPrefix[static_cast<int>(level)], message.c_str());
  std::fflush(stderr);
}

}  // namespace recast::log
