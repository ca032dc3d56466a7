#include "common/cli.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moe {

FlagParser::FlagParser(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void FlagParser::AddString(const std::string& name, std::string* out, const std::string& help,
                           bool required) {
  flags_.push_back({name, help, out->empty() ? "" : "\"" + *out + "\"", "STRING", required, false,
                    false, [out](const std::string& v) {
                      *out = v;
                      return true;
                    }});
}

void FlagParser::AddInt(const std::string& name, int64_t* out, const std::string& help,
                        bool required) {
  flags_.push_back({name, help, required ? "" : absl::StrCat(*out), "INT", required, false, false,
                    [out](const std::string& v) { return absl::SimpleAtoi(v, out); }});
}

void FlagParser::AddDouble(const std::string& name, double* out, const std::string& help) {
  flags_.push_back({name, help, absl::StrCat(*out), "NUMBER", false, false, false,
                    [out](const std::string& v) { return absl::SimpleAtod(v, out); }});
}

void FlagParser::AddBool(const std::string& name, bool* out, const std::string& help) {
  flags_.push_back({name, help, *out ? "true" : "false", "", false, true, false,
                    [out](const std::string& v) { return absl::SimpleAtob(v, out); }});
}

FlagParser::Flag* FlagParser::Find(const std::string& name) {
  for (Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool FlagParser::WasSet(const std::string& name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.set;
  }
  return false;
}

absl::Status FlagParser::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      return absl::OkStatus();
    }
    if (arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Flag* f = Find(name);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (!has_value) {
      if (f->is_bool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (!f->assign(value)) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, ": cannot parse \"", value,
                                                     "\" as ",
                                                     f->is_bool ? "true/false" : f->type));
    }
    f->set = true;
  }
  for (const Flag& f : flags_) {
    if (f.required && !f.set) {
      return absl::InvalidArgumentError(absl::StrCat("missing required flag --", f.name));
    }
  }
  return absl::OkStatus();
}

std::string FlagParser::Usage() const {
  std::string s = absl::StrCat("Usage: ", program_, " [flags]\n\n", summary_, "\n\nFlags:\n");
  for (const Flag& f : flags_) {
    std::string head = absl::StrCat("  --", f.name, f.is_bool ? "" : absl::StrCat(" ", f.type));
    if (head.size() < 30) head.append(30 - head.size(), ' ');
    absl::StrAppend(&s, head, " ", f.help);
    if (f.required) {
      absl::StrAppend(&s, " (required)");
    } else if (!f.default_text.empty()) {
      absl::StrAppend(&s, " (default: ", f.default_text, ")");
    }
    absl::StrAppend(&s, "\n");
  }
  absl::StrAppend(&s, "  --help                         Print this help and exit.\n");
  return s;
}

void FlagParser::ParseOrExit(int argc, char** argv) {
  absl::Status s = Parse(argc, argv);
  if (help_) {
    std::fputs(Usage().c_str(), stdout);
    std::exit(0);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n\n%s", program_.c_str(), std::string(s.message()).c_str(),
                 Usage().c_str());
    std::exit(2);
  }
}

}  // namespace moe
