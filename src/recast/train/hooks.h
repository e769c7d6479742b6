#pragma once

// What a recast (or anything else) adds to a training run without the
// trainer knowing it: a TrainHook is asked, at fixed points of the loop, for
// parameters to keep out of weight decay, a penalty to add once per step, and
// statistics to log at every evaluation and epoch end. Recasts create their
// hooks for a model (recasts::Recast::train_hooks), typically only when the
// model has their layers.

#include "recast/models/model.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <set>
#include <string>

namespace recast::train {

class TrainHook {
 public:
  virtual ~TrainHook() = default;
  // Names its metrics ("frobenius", "tcnn").
  virtual std::string name() const = 0;
  // Called once before training with the names of the parameters that train;
  // throws UsageError when the hook cannot act on them. Returns the names to
  // keep out of weight decay.
  virtual std::set<std::string> setup(models::Model& /*model*/,
                                      const std::set<std::string>& /*trainable*/) {
    return {};
  }
  // A scalar added once per step after the micro-batches, times
  // penalty_weight() (its gradient joins the loss's); logged under name()
  // unweighted. Undefined: no penalty.
  virtual at::Tensor penalty() { return {}; }
  virtual double penalty_weight() const { return 1.0; }
  // Statistics at evaluations and epoch ends on `probe` (the first examples of
  // the validation split), logged as {"step", "split": name(), "epoch", ...};
  // null: nothing to log.
  virtual nlohmann::json statistics(models::Model& /*model*/, const models::Batch& /*probe*/) {
    return nullptr;
  }
};

}  // namespace recast::train
