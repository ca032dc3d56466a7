#include "common/machine_info.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moe {
namespace {

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "key<tabs>: value" lines; the value of the first line whose key is `key`.
absl::string_view Field(absl::string_view text, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::StripAsciiWhitespace(line.substr(0, colon)) == key) {
      return absl::StripAsciiWhitespace(line.substr(colon + 1));
    }
  }
  return {};
}

}  // namespace

MachineInfo ParseMachineInfo(absl::string_view cpuinfo, absl::string_view meminfo) {
  MachineInfo m;
  m.cpu_model = std::string(Field(cpuinfo, "model name"));
  if (m.cpu_model.empty()) m.cpu_model = std::string(Field(cpuinfo, "CPU part"));  // Arm
  absl::string_view flags = Field(cpuinfo, "flags");
  if (flags.empty()) flags = Field(cpuinfo, "Features");  // Arm
  const std::vector<absl::string_view> have = absl::StrSplit(flags, ' ', absl::SkipEmpty());
  for (absl::string_view ext : kReportedSimd) {
    if (std::find(have.begin(), have.end(), ext) != have.end()) m.simd.emplace_back(ext);
  }
  for (absl::string_view line : absl::StrSplit(cpuinfo, '\n')) {
    if (absl::StartsWith(line, "processor")) ++m.logical_cpus;
  }
  absl::string_view total = Field(meminfo, "MemTotal");  // "24576000 kB"
  absl::ConsumeSuffix(&total, " kB");
  double kib = 0;
  if (absl::SimpleAtod(total, &kib)) m.memory_gib = kib / (1024.0 * 1024.0);
  return m;
}

MachineInfo ReadMachineInfo() {
  MachineInfo m = ParseMachineInfo(ReadFile("/proc/cpuinfo"), ReadFile("/proc/meminfo"));
  if (m.logical_cpus == 0) m.logical_cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  cpu_set_t set;
  m.usable_cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : m.logical_cpus;
  return m;
}

std::string Describe(const MachineInfo& m) {
  return absl::StrFormat("%s, %d of %d CPUs, %.1f GiB, SIMD %s",
                         m.cpu_model.empty() ? "unknown CPU" : m.cpu_model, m.usable_cpus,
                         m.logical_cpus, m.memory_gib,
                         m.simd.empty() ? "none reported" : absl::StrJoin(m.simd, " "));
}

}  // namespace moe
