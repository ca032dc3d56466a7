#include "coordinator/api_keys.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace moe {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Every byte of the longer string is visited whatever the contents.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::StatusOr<std::vector<std::string>> ParseApiKeyFile(absl::string_view text) {
  std::vector<std::string> keys;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    if (std::any_of(line.begin(), line.end(), [](char c) { return absl::ascii_isspace(c); })) {
      return absl::InvalidArgumentError(
          absl::StrCat("API key file line ", line_no, ": a key cannot contain white space"));
    }
    keys.emplace_back(line);
  }
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Create(std::vector<std::string> fixed,
                                                         std::string file) {
  fixed.erase(std::remove(fixed.begin(), fixed.end(), std::string()), fixed.end());
  std::unique_ptr<ApiKeys> keys(new ApiKeys(std::move(fixed), std::move(file)));
  if (!keys->file_.empty()) MOE_RETURN_IF_ERROR(keys->Reload().status());
  return keys;
}

absl::StatusOr<size_t> ApiKeys::Reload() {
  std::vector<std::string> from_file;
  if (!file_.empty()) {
    std::ifstream in(file_);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read the API key file ", file_));
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = ParseApiKeyFile(text.str());
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(file_, ": ", parsed.status().message()));
    }
    from_file = std::move(*parsed);
  }
  std::lock_guard<std::mutex> lock(mu_);
  from_file_ = std::move(from_file);
  return fixed_.size() + from_file_.size();
}

bool ApiKeys::Allows(absl::string_view authorization) const {
  if (!enabled_) return true;
  // The scheme is case-insensitive (RFC 7235); the key is not.
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  const absl::string_view key = authorization.substr(kScheme.size());
  bool ok = false;  // every key is compared, so the time does not tell which one matched
  for (const std::string& k : fixed_) ok |= ConstantTimeEquals(key, k);
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& k : from_file_) ok |= ConstantTimeEquals(key, k);
  return ok;
}

}  // namespace moe
