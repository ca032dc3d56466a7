#include "text/normalizer.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::text {

std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to) {
  std::string out;
  size_t start = 0;
  for (size_t at; (at = text.find(from, start)) != std::string_view::npos; start = at + from.size()) {
    out.append(text.substr(start, at - start));
    out.append(to);
  }
  out.append(text.substr(start));
  return out;
}

absl::Status Normalizer::Add(const nlohmann::json& j) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) MOE_RETURN_IF_ERROR(Add(n));
    return absl::OkStatus();
  }
  Step s;
  s.kind = Step::Kind::kForm;
  if (type == "NFC") {
    s.form = NormalForm::kNfc;
  } else if (type == "NFD") {
    s.form = NormalForm::kNfd;
  } else if (type == "NFKC") {
    s.form = NormalForm::kNfkc;
  } else if (type == "NFKD") {
    s.form = NormalForm::kNfkd;
  } else if (type == "Replace") {
    const auto& pattern = j.at("pattern");
    if (!pattern.contains("String")) {
      return absl::UnimplementedError("normalizer Replace with a Regex pattern is not supported");
    }
    s.kind = Step::Kind::kReplace;
    s.from = pattern.at("String").get<std::string>();
    s.to = j.at("content").get<std::string>();
    if (s.from.empty()) return absl::InvalidArgumentError("normalizer Replace of an empty string");
  } else if (type == "Prepend") {
    s.kind = Step::Kind::kPrepend;
    s.to = j.at("prepend").get<std::string>();
  } else {
    return absl::UnimplementedError(absl::StrCat("normalizer \"", type, "\" is not supported"));
  }
  steps_.push_back(std::move(s));
  return absl::OkStatus();
}

absl::StatusOr<Normalizer> Normalizer::FromJson(const nlohmann::json& json) {
  Normalizer n;
  try {
    MOE_RETURN_IF_ERROR(n.Add(json));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("normalizer: ", e.what()));
  }
  return n;
}

std::string Normalizer::Apply(std::string_view text) const {
  std::string s(text);
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::Kind::kForm: s = Normalize(s, step.form); break;
      case Step::Kind::kReplace: s = ReplaceAll(s, step.from, step.to); break;
      case Step::Kind::kPrepend:
        if (!s.empty()) s.insert(0, step.to);
        break;
    }
  }
  return s;
}

}  // namespace moe::text
