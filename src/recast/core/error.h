#pragma once

// One exception type for everything recast reports to a user. The message is a
// single line that names the thing at fault (file, tensor, option) and what was
// expected vs found; context is prepended as the error travels outwards
// ("model.safetensors: tensor 'w': ...").

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace recast {

// Concatenates anything that has operator<< into a string (like c10::str,
// under another name so that argument-dependent lookup never finds both).
template <typename... Args>
std::string msg(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// "[2, 3]" for any sequence of integers (std::vector, at::IntArrayRef).
template <typename Dims>
std::string shape_string(const Dims& dims) {
  std::string out = "[";
  for (auto d : dims) out += (out.size() > 1 ? ", " : "") + std::to_string(d);
  return out + "]";
}

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Quotes a name for messages: 'name', with control characters escaped so that
// an error stays on one line whatever a file contains.
std::string quote(std::string_view name);

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message);

  // Returns a copy whose message reads "<context>: <message>".
  Error with_context(const std::string& context) const;
};

// Usage errors (bad option values, unknown names): the CLI exits with code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace recast

// RECAST_CHECK(cond, parts...): throws recast::Error(msg(parts...)) when cond is false.
#define RECAST_CHECK(cond, ...)                                     \
  do {                                                              \
    if (!(cond)) throw ::recast::Error(::recast::msg(__VA_ARGS__)); \
  } while (false)
