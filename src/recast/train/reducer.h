#pragma once

// Gradient averaging for data parallelism, as PyTorch's DDP reducer does it
// (LibTorch's C++ API has no DDP module): the trainable parameters are cut
// into buckets of ~25 MB in reverse registration order (roughly the order in
// which backward produces their gradients); each parameter's .grad is a view
// into its bucket's flat buffer; a hook after each parameter's gradient
// accumulation counts the bucket down, and a full bucket's all-reduce is
// launched at once, so communication overlaps the rest of the backward.
// Buckets are launched in index order on every rank (a bucket that is ready
// early waits for the ones before it), so the ranks issue the same
// collectives in the same order whatever the autograd engine does.
//
// Per step:
//   prepare(sync)   before each backward; sync = false for the micro-batches
//                   of gradient accumulation before the last (no communication)
//   finish()        after the last backward: launches what the hooks did not
//                   (parameters unused on this rank), waits, divides by the
//                   world size; parameters no rank used get no gradient (as in
//                   a single process, so the optimizer skips them)
//   release()       after the optimizer step (the buffers are zeroed at the
//                   next prepare)

#include "recast/train/comm.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace recast::train {

class GradReducer {
 public:
  static constexpr int64_t kDefaultBucketBytes = 25 << 20;

  GradReducer(std::vector<at::Tensor> params, std::shared_ptr<Communicator> comm,
              int64_t bucket_bytes = kDefaultBucketBytes);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  void prepare(bool sync);
  void finish();
  void release();

  int64_t buckets() const;
  // Buckets whose all-reduce started inside backward (the overlap), last step.
  int64_t launched_in_backward() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace recast::train
