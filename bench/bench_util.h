// What every benchmark needs: a steady clock in seconds, an exit with a message on an error, and
// integer-list flags.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

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

// The items of a comma-separated flag value (empty items skipped) as positive integers; exits with
// `bench: --flag: 'item' is not a positive what` on any other item.
template <class Int>
std::vector<Int> PositiveIntsOrExit(const std::string& text, const char* bench, const char* flag,
                                    const char* what) {
  std::vector<Int> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    Int v = 0;
    if (!absl::SimpleAtoi(item, &v) || v < 1) {
      std::fprintf(stderr, "%s: --%s: '%s' is not a positive %s\n", bench, flag,
                   std::string(item).c_str(), what);
      std::exit(1);
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace moe
