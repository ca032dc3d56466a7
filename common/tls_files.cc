#include "common/tls_files.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view flag) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in || text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": not a readable PEM file"));
  }
  return text.str();
}

absl::StatusOr<TlsPem> ReadTlsFiles(const TlsFiles& files, const TlsFlagNames& flags) {
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(flags.cert, ", ", flags.key, " and ", flags.ca, " go together"));
  }
  TlsPem pem;
  MOE_ASSIGN_OR_RETURN(pem.cert, ReadPemFile(files.cert, flags.cert));
  MOE_ASSIGN_OR_RETURN(pem.key, ReadPemFile(files.key, flags.key));
  MOE_ASSIGN_OR_RETURN(pem.ca, ReadPemFile(files.ca, flags.ca));
  return pem;
}

}  // namespace moe
