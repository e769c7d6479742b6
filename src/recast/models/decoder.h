#pragma once

// Pieces shared by the decoder-only language models (GPT-2, Llama).

#include "recast/models/model.h"
#include "recast/ops/attention.h"

#include <torch/nn/modules/linear.h>

#include <utility>

namespace recast::models {

// input_ids as int64 [B, T], checked on the host: ids in [0, vocab), positions
// within the model's context. Errors name the offending id and where it is.
at::Tensor check_input_ids(const Batch& batch, int64_t vocab, int64_t max_positions,
                           int64_t offset);

// A decoder-only model's inputs for one forward after `cache`'s tokens (none
// without a cache): ids as check_input_ids returns them; the causal mask with
// key padding from batch.attention_mask ([B, offset + T]); positions int64
// [B or 1, T] on the ids' device, batch.position_ids when given (checked:
// shape, 0 <= p < max_positions), else offset, offset + 1, ...
// In a fixed-shape step (cache->fixed_step()) nothing is read on the host:
// the ids and positions are the decoder's own (bounded when it set the step
// up), the mask is the cache's slot and valid keys.
struct DecoderInputs {
  at::Tensor ids;
  ops::AttentionMask mask;
  at::Tensor positions;
};
DecoderInputs decoder_inputs(const Batch& batch, int64_t vocab, int64_t max_positions,
                             const KVCache* cache);

// Number of labels when `config` describes a sequence classifier (its
// "architectures" names `architecture`): len(id2label), else num_labels; 0 for a
// language model.
int64_t sequence_classification_labels(const nlohmann::json& config, const char* architecture);

// x [B, T, W] -> [B, W]: each sequence's last real token (attention_mask [B, T]
// with right padding), or the last position without a mask.
at::Tensor last_token_states(const at::Tensor& x, const at::Tensor& attention_mask);

// x [B, T, W] -> its last `keep` positions (keep <= 0 or >= T: all of x).
at::Tensor last_positions(const at::Tensor& x, int64_t keep);

// The output projection: tied to the token embedding (no tensor of its own,
// absent from the checkpoint) or a bias-free Linear registered as "lm_head".
class LmHead {
 public:
  void init(torch::nn::Module& owner, int64_t width, int64_t vocab, bool tied);
  // x: [B, T, width] -> logits [B, T, vocab]
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& embedding) const;
  std::vector<std::string> tied_names() const;

 private:
  bool tied_ = true;
  torch::nn::Linear linear_{nullptr};
};

}  // namespace recast::models
