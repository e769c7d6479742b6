#pragma once

// Training checkpoints: OUT/checkpoints/step-NNNNNNNN/ holds config.json,
// model.safetensors, optimizer.safetensors (AdamW state and the RNG states)
// and trainer_state.json (step, loader position, the options fingerprint),
// written last. A checkpoint is assembled under a temporary name and renamed
// into place, so a crash or SIGKILL never leaves a half-written one under its
// final name; the newest `keep` are kept.

#include "recast/models/model.h"
#include "recast/train/data.h"
#include "recast/train/optim.h"

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace recast::train {

// "step-00000200"
std::string step_name(int64_t step);
// Complete checkpoints under `dir` (those with trainer_state.json), oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir);
// The newest complete checkpoint under OUT/checkpoints ("" when none).
std::string latest_checkpoint(const std::string& out);
// Removes what an interrupted save left (".tmp-*").
void remove_stale_temporaries(const std::string& ckpt_dir);

// `optimizer_state` is AdamW::state() (gathered from every rank when
// sharded); `world_size` is recorded so that a resume on another one can say
// it is not bit-exact.
void save_checkpoint(const std::string& ckpt_dir, const models::Model& model,
                     const io::NamedTensors& optimizer_state, const Loader& loader, int64_t step,
                     const nlohmann::json& fingerprint, c10::Device device, int keep,
                     int world_size = 1);

struct CheckpointState {
  int64_t step = 0;
  nlohmann::json loader;
  int world_size = 1;  // of the run that wrote it
};
// Restores weights, optimizer and RNG states; throws naming the option when
// the checkpoint was made with another fingerprint.
CheckpointState load_checkpoint(const std::string& dir, models::Model& model, AdamW& opt,
                                c10::Device device, const nlohmann::json& fingerprint);

}  // namespace recast::train
