#include "text/pre_tokenizer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "text/normalizer.h"

namespace moe::text {
namespace {

// GPT-2's pattern, which HF's ByteLevel pre-tokenizer applies when `use_regex` is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// JSON string escapes already resolved, HF stores a Split's literal pattern as {"String": s}.
std::string EscapeLiteral(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(R"(\^$.|?*+()[]{})").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<PreTokenizer::Behavior> ParseBehavior(const nlohmann::json& json) {
  const std::string b = json.value("behavior", "Isolated");
  if (b == "Isolated") return PreTokenizer::Behavior::kIsolated;
  if (b == "Removed") return PreTokenizer::Behavior::kRemoved;
  if (b == "MergedWithPrevious") return PreTokenizer::Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return PreTokenizer::Behavior::kMergedWithNext;
  return absl::UnimplementedError(absl::StrCat("Split behavior \"", b, "\" is not supported"));
}

}  // namespace

absl::Status PreTokenizer::AddSplit(std::string_view pattern, Behavior behavior) {
  MOE_ASSIGN_OR_RETURN(Regex regex, Regex::Compile(pattern));
  steps_.push_back({std::move(regex), behavior});
  return absl::OkStatus();
}

absl::Status PreTokenizer::Add(const nlohmann::json& json) {
  if (json.is_null()) return absl::OkStatus();
  const std::string type = json.value("type", "");
  if (type == "Sequence") {
    for (const auto& step : json.at("pretokenizers")) MOE_RETURN_IF_ERROR(Add(step));
    return absl::OkStatus();
  }
  if (type == "Split") {
    if (json.value("invert", false)) {
      return absl::UnimplementedError("Split with \"invert\": true is not supported");
    }
    MOE_ASSIGN_OR_RETURN(Behavior behavior, ParseBehavior(json));
    const auto& pattern = json.at("pattern");
    if (pattern.contains("Regex")) return AddSplit(pattern.at("Regex").get<std::string>(), behavior);
    if (pattern.contains("String")) {
      return AddSplit(EscapeLiteral(pattern.at("String").get<std::string>()), behavior);
    }
    return absl::InvalidArgumentError("Split pattern is neither {\"Regex\"} nor {\"String\"}");
  }
  if (type == "ByteLevel") {
    if (json.value("add_prefix_space", false)) {
      return absl::UnimplementedError("ByteLevel with \"add_prefix_space\": true is not supported");
    }
    byte_level_ = true;
    if (json.value("use_regex", true)) return AddSplit(kGpt2Pattern, Behavior::kIsolated);
    return absl::OkStatus();
  }
  if (type == "Metaspace") {
    // Its rewrite happens before every split, so it can only come first.
    if (!steps_.empty() || metaspace_ || byte_level_) {
      return absl::UnimplementedError("Metaspace after another pre-tokenizer step is not supported");
    }
    MetaspaceStep m;
    m.replacement = json.value("replacement", "\u2581");
    if (m.replacement.empty()) return absl::InvalidArgumentError("Metaspace with an empty replacement");
    const std::string scheme =
        json.contains("prepend_scheme") ? json.at("prepend_scheme").get<std::string>()
                                        : (json.value("add_prefix_space", true) ? "always" : "never");
    if (scheme == "always") {
      m.prepend = MetaspaceStep::Prepend::kAlways;
    } else if (scheme == "first") {
      m.prepend = MetaspaceStep::Prepend::kFirst;
    } else if (scheme == "never") {
      m.prepend = MetaspaceStep::Prepend::kNever;
    } else {
      return absl::UnimplementedError(absl::StrCat("Metaspace prepend_scheme \"", scheme, "\" is not supported"));
    }
    metaspace_ = m;
    if (json.value("split", true)) return AddSplit(EscapeLiteral(m.replacement), Behavior::kMergedWithNext);
    return absl::OkStatus();
  }
  if (type == "Digits") {
    return AddSplit(json.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                    Behavior::kIsolated);
  }
  return absl::UnimplementedError(absl::StrCat("pre-tokenizer \"", type, "\" is not supported"));
}

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const nlohmann::json& json) {
  PreTokenizer p;
  try {
    MOE_RETURN_IF_ERROR(p.Add(json));
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer: ", e.what()));
  }
  return p;
}

absl::StatusOr<PreTokenizer> PreTokenizer::FromPattern(std::string_view pattern) {
  PreTokenizer p;
  MOE_RETURN_IF_ERROR(p.AddSplit(pattern, Behavior::kIsolated));
  return p;
}

bool PreTokenizer::Metaspace(std::string_view text, bool at_start, std::string* out) const {
  if (!metaspace_) return false;
  const std::string& r = metaspace_->replacement;
  *out = ReplaceAll(text, " ", r);
  if (out->empty()) return true;
  const bool prepend = metaspace_->prepend == MetaspaceStep::Prepend::kAlways ||
                       (metaspace_->prepend == MetaspaceStep::Prepend::kFirst && at_start);
  if (prepend && out->compare(0, r.size(), r) != 0) out->insert(0, r);
  return true;
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  thread_local std::vector<std::string_view> current, next;
  current.assign(1, text);
  for (const Step& step : steps_) {
    next.clear();
    for (std::string_view piece : current) {
      size_t gap = 0;        // start of the text not yet given out
      bool pending = false;  // kMergedWithNext: a match waits to be joined to what follows
      size_t pending_begin = 0;
      auto emit = [&](size_t b, size_t e) {
        if (e > b) next.push_back(piece.substr(b, e - b));
      };
      step.regex.ForEachMatch(piece, [&](size_t b, size_t e) {
        switch (step.behavior) {
          case Behavior::kIsolated:
            emit(gap, b);
            emit(b, e);
            break;
          case Behavior::kRemoved:
            emit(gap, b);
            break;
          case Behavior::kMergedWithPrevious:
            emit(gap, e);
            break;
          case Behavior::kMergedWithNext:
            emit(pending ? pending_begin : gap, b);
            pending = true;
            pending_begin = b;
            break;
        }
        gap = e;
      });
      emit(pending ? pending_begin : gap, piece.size());
    }
    current.swap(next);
  }
  pieces->insert(pieces->end(), current.begin(), current.end());
}

}  // namespace moe::text
