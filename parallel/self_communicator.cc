#include <cstring>
#include <vector>

#include "parallel/communicator.h"

namespace moe {
namespace {

class LocalWindow final : public SharedWindow {
 public:
  explicit LocalWindow(size_t bytes) : data_(bytes) {}
  char* segment(int) override { return data_.data(); }
  size_t bytes() const override { return data_.size(); }
  void Sync() override {}

 private:
  std::vector<char> data_;
};

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "self"; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(int64_t*, size_t) override { return absl::OkStatus(); }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    Copy(send, bytes, recv);
    return absl::OkStatus();
  }
  absl::Status AllGatherV(const void* send, size_t bytes, void* recv,
                          const std::vector<size_t>&) override {
    Copy(send, bytes, recv);
    return absl::OkStatus();
  }
  absl::Status AllToAll(const void* send, size_t bytes, void* recv) override {
    Copy(send, bytes, recv);
    return absl::OkStatus();
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>&) override {
    Copy(send, send_bytes[0], recv);
    return absl::OkStatus();
  }
  absl::Status Broadcast(void*, size_t, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  bool on_one_host() const override { return true; }
  absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t bytes) override {
    return std::unique_ptr<SharedWindow>(new LocalWindow(bytes));
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int, int) override {
    return std::unique_ptr<Communicator>(new SelfCommunicator());
  }

 private:
  static void Copy(const void* src, size_t bytes, void* dst) {
    if (bytes > 0 && src != dst) std::memmove(dst, src, bytes);
  }
};

}  // namespace

std::unique_ptr<Communicator> MakeSelfCommunicator() {
  return std::make_unique<SelfCommunicator>();
}

std::vector<size_t> PrefixOffsets(const std::vector<size_t>& sizes) {
  std::vector<size_t> off(sizes.size(), 0);
  for (size_t i = 1; i < sizes.size(); ++i) off[i] = off[i - 1] + sizes[i - 1];
  return off;
}

}  // namespace moe
