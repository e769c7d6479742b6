#pragma once

// AdamW (decoupled weight decay, Loshchilov & Hutter) with parameter groups,
// the learning-rate schedule, and gradient clipping. Written here rather than
// taken from torch::optim so that its state is plain named tensors (saved to
// safetensors, restored exactly) and its update runs as a few multi-tensor
// (_foreach) kernels; tested against torch::optim::AdamW.

#include "recast/io/safetensors.h"
#include "recast/train/comm.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace recast::train {

struct ParamGroup {
  std::string name;  // "decay" / "no_decay"
  double weight_decay = 0.0;
  std::vector<std::string> names;
  std::vector<at::Tensor> params;
};

// Standard split: weight decay on matrices (2-D and up), none on biases,
// norms, embeddings and the names in `no_decay` (factors under Frobenius
// decay). `trainable` are (name, parameter) pairs.
std::vector<ParamGroup> default_param_groups(
    const std::vector<std::pair<std::string, at::Tensor>>& trainable, double weight_decay,
    const std::set<std::string>& no_decay = {});

class AdamW {
 public:
  struct Options {
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  };
  AdamW(std::vector<ParamGroup> groups, Options options);

  // One update with learning rate `lr` from the parameters' .grad().
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

  // "exp_avg/NAME", "exp_avg_sq/NAME" (CPU copies) and "step" (int64 scalar).
  // Sharded: a collective (every rank calls it) that gathers every moment.
  io::NamedTensors state() const;
  // Throws naming the tensor when the state does not fit these parameters.
  // Sharded: takes a whole state and keeps this rank's share.
  void load_state(const io::NamedTensors& state);

  // ZeRO-1: from now on this rank keeps the moments of its share of the
  // parameters only (whole tensors, balanced by size, the same split on every
  // rank) and updates only those; step() then broadcasts each share from its
  // owner. The arithmetic of each update is the unsharded one.
  void shard(std::shared_ptr<Communicator> comm);
  bool sharded() const { return comm_ != nullptr; }
  // Elements of the moments this rank holds.
  int64_t state_numel() const;

 private:
  std::vector<ParamGroup> groups_;
  Options options_;
  int64_t steps_ = 0;
  bool owned(size_t group, size_t i) const;
  std::vector<std::vector<at::Tensor>> exp_avg_, exp_avg_sq_;  // per group (undefined: not ours)
  std::shared_ptr<Communicator> comm_;                         // set by shard()
  std::vector<std::vector<int>> owner_;                        // per group, per parameter
};

// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to
// peak * min_ratio at `total`. `step` counts from 0 (the first update).
double cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio);

// The global L2 norm of the gradients, and the gradients scaled by
// max_norm / norm when it exceeds max_norm (max_norm <= 0: no clipping).
// Returns the norm before clipping (a device scalar; no host sync).
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace recast::train
