// Errors that say what is wrong: every failed check throws zsq::Error with the condition's message
// and the source location, so a user sees "conv2d: input must be 4-D, got [3, 32]" and not a crash.
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <source_location>
#include <stdexcept>
#include <string>

namespace zsq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& message,
                              std::source_location where = std::source_location::current()) {
  (void)where;
  throw Error(message);
}

}  // namespace zsq

// ZSQ_CHECK(cond, "fmt", args...): throws zsq::Error with the formatted message when cond is false.
#define ZSQ_CHECK(cond, ...)                   \
  do {                                         \
    if (!(cond)) [[unlikely]] {                \
      ::zsq::fail(::fmt::format(__VA_ARGS__)); \
    }                                          \
  } while (0)
