#pragma once

// Levelled logging to stderr: "recast: warning: ...". The level comes from
// --log-level / -v / -q on the command line or RECAST_LOG_LEVEL in the
// environment; stdout stays free for results (--json).

#include "recast/core/error.h"

#include <string>
#include <string_view>

namespace recast::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

void set_level(Level level);
Level level();
// Parses "debug|info|warn|error|off"; throws UsageError on anything else.
Level parse_level(std::string_view name);
bool enabled(Level level);
void write(Level level, const std::string& message);

template <typename... Args>
void debug(const Args&... args) {
  if (enabled(Level::Debug)) write(Level::Debug, msg(args...));
}
template <typename... Args>
void info(const Args&... args) {
  if (enabled(Level::Info)) write(Level::Info, msg(args...));
}
template <typename... Args>
void warn(const Args&... args) {
  if (enabled(Level::Warn)) write(Level::Warn, msg(args...));
}
template <typename... Args>
void error(const Args&... args) {
  if (enabled(Level::Error)) write(Level::Error, msg(args...));
}

}  // namespace recast::log
