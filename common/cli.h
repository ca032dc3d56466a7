// Command-line flags for the project's binaries: `--name value` or `--name=value`, booleans as
// `--name` / `--name=false`, `--help` printing every flag with its default. Unknown flags and bad
// values are errors that name the flag.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace moe {

class FlagParser {
 public:
  FlagParser(std::string program, std::string summary);

  void AddString(const std::string& name, std::string* out, const std::string& help,
                 bool required = false);
  void AddInt(const std::string& name, int64_t* out, const std::string& help,
              bool required = false);
  void AddDouble(const std::string& name, double* out, const std::string& help);
  void AddBool(const std::string& name, bool* out, const std::string& help);

  // Parses argv; false with `help_requested()` true after --help.
  absl::Status Parse(int argc, char** argv);
  bool help_requested() const { return help_; }
  bool WasSet(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string Usage() const;

  // Parse, print usage on --help (exit 0) or the error and usage (exit 2).
  void ParseOrExit(int argc, char** argv);

 private:
  struct Flag {
    std::string name, help, default_text, type;
    bool required = false, is_bool = false, set = false;
    std::function<bool(const std::string&)> assign;
  };
  Flag* Find(const std::string& name);
  std::string program_, summary_;
  std::vector<Flag> flags_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

}  // namespace moe
