#include "common/logging.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace moe {
namespace {
std::mutex g_mu;
std::string g_prefix;
constexpr LogLevel kMinLevel = LogLevel::kInfo;
}  // namespace

void SetLogPrefix(std::string prefix) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_prefix = std::move(prefix);
}
LogLevel MinLogLevel() { return kMinLevel; }

LogMessage::~LogMessage() {
  static const char* kNames[] = {"D", "I", "W", "E"};
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  localtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(stderr, "%s %s.%03d%s%s] %s\n", kNames[static_cast<int>(level_)], stamp, ms,
               g_prefix.empty() ? "" : " ", g_prefix.c_str(), stream_.str().c_str());
  std::fflush(stderr);
}

}  // namespace moe
