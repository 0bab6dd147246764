// Public: errors as values at I/O boundaries: Result<T> holds a T or an Error.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace mixtral {

namespace detail {
[[noreturn]] inline void bad_result_access(const char* what) {
  std::fprintf(stderr, "mixtral: internal error: %s\n", what);
  std::abort();
}
}  // namespace detail

// What kind of failure: decides the process exit status (usage 2, data/io 1).
enum class ErrorKind { kUsage, kData, kIo };

struct Error {
  ErrorKind kind = ErrorKind::kData;
  std::string message;  // one line, names the file and the field or tensor

  static Error usage(std::string m) { return {ErrorKind::kUsage, std::move(m)}; }
  static Error data(std::string m) { return {ErrorKind::kData, std::move(m)}; }
  static Error io(std::string m) { return {ErrorKind::kIo, std::move(m)}; }
  int exit_code() const { return kind == ErrorKind::kUsage ? 2 : 1; }
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & {
    if (!ok()) detail::bad_result_access(std::get<1>(v_).message.c_str());
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!ok()) detail::bad_result_access(std::get<1>(v_).message.c_str());
    return std::get<0>(std::move(v_));
  }
  const T& value() const& {
    if (!ok()) detail::bad_result_access(std::get<1>(v_).message.c_str());
    return std::get<0>(v_);
  }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const {
    if (ok()) detail::bad_result_access("Result::error() on a value");
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Result<void>.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error e) : err_(std::move(e)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return err_; }

 private:
  Error err_;
  bool ok_ = true;
};

}  // namespace mixtral

// Propagate an error from an expression returning Status or Result<T>.
#define MX_TRY_STATUS(expr)                        \
  do {                                             \
    auto mx_try_s_ = (expr);                       \
    if (!mx_try_s_.ok()) return mx_try_s_.error(); \
  } while (0)

#define MX_CONCAT_INNER(a, b) a##b
#define MX_CONCAT(a, b) MX_CONCAT_INNER(a, b)
// MX_ASSIGN_OR_RETURN(auto x, f());
#define MX_ASSIGN_OR_RETURN(decl, expr) MX_ASSIGN_OR_RETURN_IMPL(MX_CONCAT(mx_try_r_, __LINE__), decl, expr)
#define MX_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.error();              \
  decl = std::move(tmp).value()
