#include "parallel/two_batch_overlap.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>

#include "common/status_macros.h"

namespace moe {
namespace {

// A micro-batch's stack: as large as a thread's (the layers keep their big buffers on the heap),
// reserved, not committed, with a guard page below it.
constexpr size_t kStackBytes = size_t{8} << 20;

}  // namespace

struct TwoBatchOverlap::MicroBatch {
  MicroBatch() {
    void* m = mmap(nullptr, kStackBytes + Page(), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    MOE_CHECK(m != MAP_FAILED);
    MOE_CHECK(mprotect(m, Page(), PROT_NONE) == 0);
    mapping = static_cast<char*>(m);
  }
  ~MicroBatch() { munmap(mapping, kStackBytes + Page()); }
  MicroBatch(const MicroBatch&) = delete;
  MicroBatch& operator=(const MicroBatch&) = delete;
  static size_t Page() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  char* stack() const { return mapping + Page(); }

  ucontext_t context;
  char* mapping = nullptr;  // guard page + stack
  bool done = false;
  absl::Status status;
  // The collective handed to the communication thread, and its result once `complete`.
  const std::function<absl::Status()>* collective = nullptr;
  bool complete = false;
  absl::Status collective_status;
};

struct TwoBatchOverlap::State {
  MicroBatch batches[2];
  ucontext_t scheduler;  // Run's own frame
};

TwoBatchOverlap::TwoBatchOverlap() : state_(std::make_unique<State>()) {
  thread_ = std::thread([this] { CommunicationLoop(); });
}

TwoBatchOverlap::~TwoBatchOverlap() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

TwoBatchOverlap::MicroBatch& TwoBatchOverlap::batch(int i) { return state_->batches[i]; }

void TwoBatchOverlap::CommunicationLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    MicroBatch* b = queue_.front();
    queue_.pop_front();
    lock.unlock();
    absl::Status s = (*b->collective)();
    lock.lock();
    b->collective_status = std::move(s);
    b->complete = true;
    cv_.notify_all();
  }
}

void TwoBatchOverlap::Entry(unsigned lo, unsigned hi) {
  auto* self = reinterpret_cast<TwoBatchOverlap*>((static_cast<uintptr_t>(hi) << 32) | lo);
  MicroBatch* b = &self->batch(self->current_);
  b->status = (*self->body_)(self->current_);
  b->done = true;
  // Returning resumes uc_link: Run's frame.
}

void TwoBatchOverlap::Prepare(MicroBatch* b) {
  const auto self = reinterpret_cast<uintptr_t>(this);
  b->done = false;
  b->status = absl::OkStatus();
  b->collective = nullptr;
  MOE_CHECK(getcontext(&b->context) == 0);
  b->context.uc_stack.ss_sp = b->stack();
  b->context.uc_stack.ss_size = kStackBytes;
  b->context.uc_link = &state_->scheduler;
  makecontext(&b->context, reinterpret_cast<void (*)()>(&TwoBatchOverlap::Entry), 2,
              static_cast<unsigned>(self & 0xffffffffu), static_cast<unsigned>(self >> 32));
}

absl::Status TwoBatchOverlap::Run(const std::function<absl::Status(int)>& micro_batch) {
  MOE_CHECK(current_ == -1);
  body_ = &micro_batch;
  ucontext_t* scheduler = &state_->scheduler;
  for (MicroBatch& b : state_->batches) Prepare(&b);
  // Strict turns: A, B, A, B, ...; once one has finished, the other runs alone.
  int turn = 0;
  while (!(batch(0).done && batch(1).done)) {
    const int i = batch(turn).done ? 1 - turn : turn;
    MicroBatch* b = &batch(i);
    if (b->collective != nullptr) {  // resumes from Communicate: wait for its collective
      std::unique_lock<std::mutex> lock(mu_);
      if (!b->complete) {
        const auto start = std::chrono::steady_clock::now();
        cv_.wait(lock, [&] { return b->complete; });
        exposed_seconds_ +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
    }
    current_ = i;
    MOE_CHECK(swapcontext(scheduler, &b->context) == 0);
    turn = 1 - i;
  }
  current_ = -1;
  body_ = nullptr;
  return batch(0).status.ok() ? batch(1).status : batch(0).status;
}

absl::Status TwoBatchOverlap::Communicate(const std::function<absl::Status()>& collective) {
  MOE_CHECK(current_ >= 0);  // only from inside Run's micro-batches
  MicroBatch* b = &batch(current_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    b->collective = &collective;
    b->complete = false;
    queue_.push_back(b);
    ++collectives_;
  }
  cv_.notify_all();
  MOE_CHECK(swapcontext(&b->context, &state_->scheduler) == 0);
  // Run resumes this micro-batch only once the collective completed.
  b->collective = nullptr;
  return std::move(b->collective_status);
}

absl::Status MicroBatchContext::Communicate(const std::function<absl::Status()>& collective) const {
  if (overlap != nullptr) return overlap->Communicate(collective);
  if (seconds == nullptr) return collective();
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = collective();
  *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

}  // namespace moe
