// Two-batch overlap (DeepSeek's inference system; SGLang's TBO): a step's tokens run as two
// micro-batches that take turns on the calling thread. Each hands its collectives (the MoE
// dispatch and combine) to one communication thread and gives the CPU to the other micro-batch
// until they complete, so one micro-batch's all-to-all crosses the network while the other
// computes:
//   compute   A0 B0 A1 B1 A2 B2 ...     (Ai: micro-batch A's compute up to its i-th collective)
//   network      A0 B0 A1 B1 A2 ...
// The micro-batches are coroutines, not threads: only one computes at a time, and it keeps the
// thread's OpenMP team and BLAS state. They take strict turns, so every rank hands its
// communication thread the same collectives in the same order. While Run lasts, the
// communication thread is the only one that calls the communicators (MPI_THREAD_SERIALIZED is
// enough), so every collective of a micro-batch must go through Communicate.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/status.h"

namespace moe {

class TwoBatchOverlap {
 public:
  TwoBatchOverlap();  // starts the communication thread
  ~TwoBatchOverlap();
  TwoBatchOverlap(const TwoBatchOverlap&) = delete;
  TwoBatchOverlap& operator=(const TwoBatchOverlap&) = delete;

  // Runs micro_batch(0) and micro_batch(1) to their ends, interleaved at their collectives;
  // returns the first error (micro-batch 0's before 1's). Not reentrant.
  absl::Status Run(const std::function<absl::Status(int micro_batch)>& micro_batch);
  // From inside a micro-batch: runs `collective` on the communication thread while the other
  // micro-batch computes, and returns its status.
  absl::Status Communicate(const std::function<absl::Status()>& collective);

  // Collectives run (since construction) and the seconds the compute thread waited for one with
  // nothing else to do: how much of the communication was not hidden.
  int64_t collectives() const { return collectives_; }
  double exposed_seconds() const { return exposed_seconds_; }

 private:
  struct MicroBatch;
  struct State;  // the two micro-batches (contexts, stacks) and Run's own context
  static void Entry(unsigned lo, unsigned hi);  // a coroutine's body (its `this`, split in two)
  // A fresh coroutine for `b` (getcontext returns twice: kept out of Run's frame).
  __attribute__((noinline)) void Prepare(MicroBatch* b);
  void CommunicationLoop();

  MicroBatch& batch(int i);
  std::unique_ptr<State> state_;
  int current_ = -1;  // the micro-batch running, or -1 outside Run
  const std::function<absl::Status(int)>* body_ = nullptr;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<MicroBatch*> queue_;  // micro-batches whose collective waits for the thread
  bool stop_ = false;
  std::thread thread_;
  int64_t collectives_ = 0;
  double exposed_seconds_ = 0;
};

// How a layer runs its collectives: at once (no overlap), or through a TwoBatchOverlap. `index`
// picks the micro-batch's own communication buffers (a dispatcher each). Without overlap, the
// time each collective takes is added to `*seconds` when set (with it, the overlap counts what
// was not hidden: exposed_seconds).
struct MicroBatchContext {
  int index = 0;
  TwoBatchOverlap* overlap = nullptr;
  double* seconds = nullptr;
  absl::Status Communicate(const std::function<absl::Status()>& collective) const;
};

}  // namespace moe
