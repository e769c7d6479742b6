#pragma once

// Autoregressive generation with the KV cache (softmax layers) or the
// recurrent state (T2R layers), one prompt or a batch. A batch is left-padded
// as transformers' generate does: an attention mask hides the padding and
// position ids start at 0 on every row's first real token, so each row
// continues exactly as it would alone (tested). Linear-attention layers
// prefill with the chunked form and then run the recurrence: their memory per
// sequence does not grow with its length. An encoder-decoder (T5) reads the
// prompts with its encoder (right-padded, masked) and generates the decoder's
// tokens from decoder_start_token_id, its cross-attention keys and values
// projected once.

#include "recast/models/model.h"

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

namespace recast::models {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: every token
  double top_p = 1.0;        // 1: off
};

// One token from logits [V] (any device and dtype; sampled on the CPU).
int64_t sample_token(const at::Tensor& logits, const SamplingOptions& o, at::Generator& gen);

struct GenerateOptions {
  SamplingOptions sampling;
  int64_t max_tokens = 100;
  int64_t eos = -1;      // a row stops at this token (not emitted); -1: never
  int64_t pad = 0;       // id fed at padded positions (masked out)
  int64_t context = 0;   // positions the model can take; 0: unlimited. When
                         // full, each row keeps its last context/2 tokens and
                         // prefills them afresh (a sliding window).
  // How decoder-only models step (encoder-decoders always step eagerly):
  //   Eager  a static KV cache of views (nothing copied per token), sampled
  //          on the host from `gen`;
  //   Fixed  steps of fixed shapes, sampled on the device (decode_steps.h);
  //          on CUDA one graph per step unless cuda_graph is false;
  //   Auto   Fixed on CUDA with cuda_graph, else Eager.
  // Greedy decoding gives the same tokens every way (tested).
  enum class Steps { Auto, Eager, Fixed };
  Steps steps = Steps::Auto;
  bool cuda_graph = true;
  bool static_cache = true;   // Eager: false concatenates the cache per step
  int64_t stream_every = 1;   // Fixed: the host reads the tokens every N steps
  // Fixed: the sampling noise's generator (none: the device's default,
  // seeded by the caller).
  std::optional<at::Generator> device_gen;
};

// Generates for every prompt (each non-empty) in one batch on the model's
// device. Rows are sampled in order from `gen`, so one prompt gives the same
// tokens alone or in a batch under greedy decoding. on_token(row, id) sees
// each token as it is produced. Returns the new tokens of each row.
std::vector<std::vector<int64_t>> generate(
    Model& model, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& o,
    at::Generator& gen, const std::function<void(size_t, int64_t)>& on_token = {});

}  // namespace recast::models
