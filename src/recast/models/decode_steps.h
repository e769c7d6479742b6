#pragma once

// Decoding in steps of fixed shapes over a static KV cache, and on CUDA the
// step captured once as a CUDA graph and replayed.
//
// After a prefill of a reserved cache, each step feeds one token per row from
// a tensor on the device, writes its keys at a device-side slot, attends over
// the whole buffer masked by the device-side valid keys, updates the T2R and
// convolution states in place, samples the next token on the device and
// records it in a device-side history: no allocation outside the step, no
// value read on the host. The host reads the history when it wants the tokens
// (every --stream-every steps). On CUDA the second step is captured (the first
// warms up the kernels, cuBLAS and the allocator on the capture stream) and
// every later step is a replay: one launch instead of ~150. Capture failure
// (an op that syncs with the host, a rope whose frequencies depend on the
// length) falls back to running the same step eagerly, said once at info
// level.

#include "recast/models/generate.h"
#include "recast/models/model.h"

#include <ATen/ATen.h>

#include <memory>
#include <optional>

namespace recast::models {

// One token per row from logits [B, V] on their device, nothing read on the
// host: argmax when temperature is 0, else the Gumbel-max trick (argmax of
// logits / temperature + Gumbel noise samples their softmax) over the tokens
// that top-k and top-p keep, as sample_token keeps them. `gen`: the noise's
// generator (none: the device's default). Returns int64 [B].
at::Tensor sample_on_device(const at::Tensor& logits, const SamplingOptions& o,
                            std::optional<at::Generator> gen = std::nullopt);

class FixedSteps {
 public:
  // `cache` reserved (its capacity bounds the tokens held); `history_len`:
  // columns of the token history; `graph`: capture a CUDA graph on CUDA.
  FixedSteps(Model& model, KVCache& cache, int64_t rows, int64_t history_len,
             const SamplingOptions& sampling, std::optional<at::Generator> gen, bool graph);
  ~FixedSteps();
  FixedSteps(const FixedSteps&) = delete;
  FixedSteps& operator=(const FixedSteps&) = delete;

  // After a prefill of the cache: samples each row's next token from the
  // prefill's last logits [B, V] into history column `column`, and sets the
  // steps up. key_mask [B, cache.length()]: the cache's real tokens
  // (undefined: all); next_positions [B, 1]: the next token's position.
  void start(const at::Tensor& last_logits, const at::Tensor& key_mask,
             const at::Tensor& next_positions, int64_t column);
  // One token per row (the cache must have room: tokens() < reserved()).
  void step();
  // Ends the steps: the cache takes its ordinary form (tokens() written).
  void finish();

  // int64 [B, history_len] on the device: column j holds the j-th token.
  const at::Tensor& history() const { return history_; }
  // The logits of the last step [B, V] (overwritten by the next).
  const at::Tensor& logits() const { return logits_; }
  int64_t tokens() const { return tokens_; }
  // Whether steps replay a CUDA graph (after the second step).
  bool graphed() const;

 private:
  void body();  // the step: what the graph captures

  Model& model_;
  KVCache& cache_;
  SamplingOptions sampling_;
  std::optional<at::Generator> gen_;
  int64_t rows_, tokens_ = 0;
  at::Tensor ids_, positions_, slot_, valid_, history_, column_, logits_;
  Batch batch_;
  struct Graph;
  std::unique_ptr<Graph> graph_;
};

}  // namespace recast::models
