#include "recast/core/error.h"

#include <cstdio>

namespace recast {

std::string quote(std::string_view name) {
  std::string out = "'";
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  return out;
}

namespace {
// Keeps messages on one line: newlines become "; ".
std::string one_line(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  for (char c : message) {
    if (c == '\n') {
      out += "; ";
    } else if (c != '\r') {
      out += c;
    }
  }
  return out;
}
}  // namespace

Error::Error(const std::string& message) : std::runtime_error(one_line(message)) {}

Error Error::with_context(const std::string& context) const {
  return Error(context + ": " + what());
}

}  // namespace recast
