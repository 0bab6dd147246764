// Invariants shared by the fuzz targets: a violated one aborts, which libFuzzer reports as a finding.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/result.h"

namespace mixtral::fuzz {

inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

// Errors are one line and start with the name the input was parsed under.
inline void check_error(const Error& e, const std::string& name) {
  require(e.message.rfind(name + ": ", 0) == 0, "error message does not start with the file name");
  require(e.message.size() > name.size() + 2, "empty error message");
  require(e.message.find('\n') == std::string::npos, "multi-line error message");
  require(e.kind == ErrorKind::kData, "parse error is not a data error");
}

}  // namespace mixtral::fuzz
