// What every benchmark needs: a steady clock in seconds, and an exit with a message on an error.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"

namespace moe {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Exits with `bench: what: message` unless `s` is OK.
inline void MustSucceed(const absl::Status& s, const char* bench, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s: %s\n", bench, what, std::string(s.message()).c_str());
  std::exit(1);
}

}  // namespace moe
