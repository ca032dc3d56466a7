// The PEM files of a TLS identity (a certificate chain, its key, the CA its peers must be signed
// by), as flags name them: all three or none.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

struct TlsFiles {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

struct TlsPem {
  std::string cert, key, ca;
};

// A PEM file's text, or INVALID_ARGUMENT naming `flag` and the path.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view flag);

// The three files' texts. `flags` names them in errors, e.g. {"--cluster-cert", "--cluster-key",
// "--cluster-ca"}: a missing one is INVALID_ARGUMENT.
struct TlsFlagNames {
  absl::string_view cert, key, ca;
};
absl::StatusOr<TlsPem> ReadTlsFiles(const TlsFiles& files, const TlsFlagNames& flags);

}  // namespace moe
