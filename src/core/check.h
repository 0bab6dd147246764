// Always-on invariant checks (also in release builds). For programmer errors only;
// bad input is reported through Result/Status instead.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace mixtral::detail {
[[noreturn]] void check_failed(const char* file, int line, const char* cond, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
[[noreturn]] void check_failed(const char* file, int line, const char* cond);
}  // namespace mixtral::detail

#define MX_CHECK(cond, ...)                                                                  \
  do {                                                                                       \
    if (__builtin_expect(!(cond), 0))                                                        \
      ::mixtral::detail::check_failed(__FILE__, __LINE__, #cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)
