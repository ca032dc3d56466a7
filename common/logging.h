// Minimal leveled logging to stderr: `MOE_LOG(INFO) << "loaded " << n << " tensors";`
// Lines carry a time stamp and, once SetLogPrefix is called, the process role (e.g. "rank 3").
#pragma once

#include <sstream>
#include <string>

namespace moe {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogPrefix(std::string prefix);
LogLevel MinLogLevel();

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage();
  std::ostringstream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace moe

#define MOE_LOG_LEVEL_DEBUG ::moe::LogLevel::kDebug
#define MOE_LOG_LEVEL_INFO ::moe::LogLevel::kInfo
#define MOE_LOG_LEVEL_WARNING ::moe::LogLevel::kWarning
#define MOE_LOG_LEVEL_ERROR ::moe::LogLevel::kError
#define MOE_LOG(level)                                \
  if (MOE_LOG_LEVEL_##level < ::moe::MinLogLevel()) { \
  } else                                              \
    ::moe::LogMessage(MOE_LOG_LEVEL_##level).stream()
