// API keys of the public gRPC API. A client sends `authorization: Bearer KEY` metadata; without a
// configured key every call is allowed. Keys come from --api-key, the MOE_API_KEY environment
// variable and --api-key-file (one key a line; blank lines and lines starting with # are
// skipped), which Reload() reads again, so a key can be revoked without a restart (SIGHUP).
// Keys are compared in constant time and never logged. Thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

// a == b, in time that depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// The keys of a key file's text; INVALID_ARGUMENT naming the line for a key with white space.
absl::StatusOr<std::vector<std::string>> ParseApiKeyFile(absl::string_view text);

class ApiKeys {
 public:
  // `fixed`: keys from flags and the environment (empty strings are ignored); `file`: a key file
  // or empty. Fails if the file cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Create(std::vector<std::string> fixed,
                                                         std::string file);

  // Reads the key file again; on an error the keys in use stay. Returns the number of keys.
  absl::StatusOr<size_t> Reload();
  // Whether calls need a key (a key or a key file was configured, even an empty file).
  bool enabled() const { return enabled_; }
  // Whether `authorization` (the metadata value, "Bearer KEY") carries a valid key.
  bool Allows(absl::string_view authorization) const;

 private:
  ApiKeys(std::vector<std::string> fixed, std::string file)
      : fixed_(std::move(fixed)),
        file_(std::move(file)),
        enabled_(!fixed_.empty() || !file_.empty()) {}

  const std::vector<std::string> fixed_;
  const std::string file_;
  const bool enabled_;
  mutable std::mutex mu_;
  std::vector<std::string> from_file_;
};

}  // namespace moe
