#pragma once

// The training loop every verb shares (pretrain, finetune, and the recasts'
// own training, such as T2R's attention transfer): AdamW with parameter
// groups, cosine schedule with warmup, clipping, gradient accumulation, bf16
// autocast on CUDA, freezing by name, periodic evaluation, and atomic
// checkpoints (train/checkpoint.h) that make --resume exact. What it
// minimises is an Objective (train/objectives.h); what recasts add
// (penalties, parameter groups, statistics) comes through TrainHooks
// (train/hooks.h); the ranks talk through a Communicator (train/comm.h).
//
// OUT/
//   config.json, model.safetensors, tokenizer, recast_manifest.json   (at the end)
//   metrics.jsonl                                                      (one line per log / eval)
//   checkpoints/step-00000200/  config.json model.safetensors optimizer.safetensors
//                               trainer_state.json (written last)
//
// A checkpoint directory is assembled under a temporary name and renamed into
// place, so a crash or SIGKILL never leaves a half-written one under its final
// name; the last `keep` (>= 2) are kept.

#include "recast/io/tokenizer.h"
#include "recast/models/model.h"
#include "recast/train/checkpoint.h"
#include "recast/train/comm.h"
#include "recast/train/data.h"
#include "recast/train/hooks.h"
#include "recast/train/objectives.h"

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace recast::train {

struct TrainOptions {
  std::string out;
  int64_t steps = 1000;
  int64_t batch_size = 16;
  int64_t grad_accum = 1;
  double lr = 3e-4;
  double min_lr_ratio = 0.1;
  int64_t warmup = -1;  // -1: min(100, steps / 10)
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;  // <= 0: no clipping
  // 4-D weights and image batches in channels-last (NHWC) memory: the
  // layout tensor-core convolutions want; the same numbers either way.
  bool channels_last = false;
  int64_t save_every = 0;  // 0: only at the end (and on a signal)
  int64_t eval_every = 0;  // 0: only at the end
  int64_t eval_batches = 20;
  int64_t log_every = 10;
  int keep = 2;
  std::string train_regex;  // empty: every parameter
  bool resume = false;
  uint64_t seed = 0;
  uint64_t split_seed = 0;  // the data's split (in the resume fingerprint)
  c10::Device device = c10::kCPU;
  bool bf16 = false;  // autocast (CUDA only)
  bool progress = true;
  // Distillation from a teacher's logits (with the default objective).
  models::ModelPtr teacher;
  double distill_alpha = 0.5, temperature = 2.0;
  // What the run minimises; null: the model's task loss (with the teacher's
  // distillation when there is one).
  std::shared_ptr<Objective> objective;
  // What recasts add to the run, and the values of their training options
  // (part of the resume fingerprint, under their keys).
  std::vector<std::shared_ptr<TrainHook>> hooks;
  nlohmann::json hook_options = nlohmann::json::object();
  std::string label = "train";  // the progress bar's
  // Write the final model, tokenizer and manifest to `out` (off when the
  // caller saves the model itself, as convert does after attention transfer).
  bool save_final = true;
  // A first SIGINT / SIGTERM stops at the next step with a checkpoint (exit 0,
  // --resume continues). Off for a run inside another verb (convert's
  // attention transfer), where a signal ends the verb and removes its output.
  bool stop_on_signal = true;
  // Data parallelism: null comm means the environment's (dist_env: torchrun's
  // variables, or a single process); batch_size is per rank.
  std::shared_ptr<Communicator> comm;
  double dist_timeout_s = 600;   // rendezvous and every collective
  bool shard_optimizer = false;  // ZeRO-1: AdamW's moments split across the ranks
};

struct TrainRun {
  nlohmann::json manifest;  // how the model was made (verb, arguments, data)
  const io::Tokenizer* tokenizer = nullptr;
};

struct TrainResult {
  int64_t step = 0;
  bool interrupted = false;  // stopped by SIGINT / SIGTERM after checkpointing
  double last_loss = 0;
  std::optional<EvalResult> eval;
};

TrainResult train(models::Model& model, const Dataset& train_data, const Dataset* val_data,
                  const TrainOptions& options, const TrainRun& run);

}  // namespace recast::train
