#include "checkpoint/weight_bytes.h"

#include "absl/strings/str_format.h"

namespace moe {

std::string WeightBytes::Describe() const {
  auto mb = [](uint64_t b) { return static_cast<double>(b) / 1e6; };
  return absl::StrFormat(
      "%.2f MB: routed experts %.2f, attention %.2f (head-split %.2f), shared experts %.2f, "
      "dense MLP %.2f, embedding+lm_head %.2f, router %.3f, norms %.3f%s",
      mb(total()), mb(routed_experts), mb(attention_head_split + attention_replicated),
      mb(attention_head_split), mb(shared_experts), mb(dense_mlp), mb(embedding), mb(router),
      mb(norms), mtp > 0 ? absl::StrFormat(", MTP head %.2f", mb(mtp)) : "");
}

}  // namespace moe
