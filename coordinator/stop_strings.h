// Stop strings matched on generated text as it streams: text that could still turn out to begin
// a stop string is held back, so a stop string split across tokens is found and never sent.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moe {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  // Adds `text` (whole UTF-8 characters); returns what can be sent now. Once a stop string has
  // appeared, returns the text before it and stopped() turns true; later calls return nothing.
  std::string Feed(std::string_view text);
  // The end of the stream: the text still held back (none after a stop).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace moe
