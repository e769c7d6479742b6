#pragma once

// Training objectives and evaluation metrics: causal language modelling,
// classification (images, and text through a pooled head), and distillation
// from a teacher's logits.

#include "recast/models/model.h"
#include "recast/train/comm.h"
#include "recast/train/data.h"

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace recast::train {

// Mean next-token cross entropy; logits [B, T, V], labels [B, T]. Computed in
// float32 whatever the logits' dtype.
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels);
// Mean cross entropy; logits [B, C], labels [B] in [0, C) (checked).
at::Tensor classification_loss(const at::Tensor& logits, const at::Tensor& labels);
// Hinton et al.'s distillation loss: T^2 * KL(softmax(teacher / T) ||
// softmax(student / T)), averaged over every position (all but the last axis).
at::Tensor distillation_kl(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                           double temperature);

// What a training run minimises. An objective runs the model's forward on a
// batch and returns the loss; the trainer knows no particular one.
class Objective {
 public:
  virtual ~Objective() = default;
  virtual at::Tensor loss(models::Model& model, const Example& ex) = 0;
};

// The task's loss (causal LM or classification), and with a teacher
// alpha * distillation + (1 - alpha) * task loss.
class TaskObjective : public Objective {
 public:
  TaskObjective(models::Task task, models::Model* teacher = nullptr, double alpha = 0.5,
                double temperature = 2.0)
      : task_(task), teacher_(teacher), alpha_(alpha), temperature_(temperature) {}
  at::Tensor loss(models::Model& model, const Example& ex) override;
  // The loss of logits the caller computed.
  at::Tensor operator()(const at::Tensor& logits, const Example& ex) const;

 private:
  models::Task task_;
  models::Model* teacher_;
  double alpha_, temperature_;
};

struct EvalOptions {
  int64_t batch_size = 16;
  int64_t max_batches = 0;  // 0: the whole split
  c10::Device device = c10::kCPU;
  bool bf16 = false;  // CUDA autocast
  // Applied to each batch's inputs on the device before the forward (for
  // example an image corruption); its second argument is the batch's index.
  std::function<void(models::Batch&, int64_t)> transform;
  // Data-parallel evaluation: batch_size is the global batch, of which each
  // rank runs its share of the rows (as in training); the sums are
  // all-reduced, so every rank returns the whole split's result.
  std::shared_ptr<Communicator> comm;
};

struct EvalResult {
  double loss = 0;            // mean per token (LM) / per example
  int64_t count = 0;          // tokens (LM) or examples
  double perplexity = 0;      // LM
  double bits_per_byte = 0;   // LM
  double accuracy = 0;        // classifiers
  std::vector<std::string> classes;
  std::vector<double> per_class_accuracy;
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  nlohmann::json to_json() const;
};

// Runs `model` (in eval mode, without gradients) over `data` in order.
EvalResult evaluate(models::Model& model, const Dataset& data, const EvalOptions& options);

}  // namespace recast::train
