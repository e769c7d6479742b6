#pragma once

// Encoder-decoder language models (T5): the encoder reads input_ids once; the
// decoder predicts the target tokens from decoder_input_ids (the targets
// shifted right behind decoder_start_token_id) and the encoder's states.

#include "recast/models/model.h"

namespace recast::models {

class Seq2SeqModel : public Model {
 public:
  using Model::Model;
  Task task() const override { return Task::Seq2SeqLM; }

  // The encoder's final states [B, S, D] for batch.input_ids (+ its
  // attention_mask: nonzero = a real token).
  virtual at::Tensor encode(const Batch& batch, Recorder* recorder = nullptr) = 0;
  // Logits [B, T, V] for decoder_ids [B, T], given the encoder's states and
  // its padding mask ([B, S], undefined: no padding). With a cache the
  // decoder extends its self-attention keys / values and projects the
  // cross-attention ones from `encoder_states` on the first call only.
  virtual at::Tensor decode(const at::Tensor& decoder_ids, const at::Tensor& encoder_states,
                            const at::Tensor& encoder_mask, Recorder* recorder,
                            KVCache* cache) = 0;

  virtual int64_t decoder_start_token() const = 0;
  virtual int64_t pad_token() const = 0;
  virtual int64_t eos_token() const = 0;  // -1: none

  // encode + decode of batch.decoder_input_ids (required).
  at::Tensor forward(const Batch& batch, Recorder* recorder = nullptr,
                     KVCache* cache = nullptr) override;
};

// transformers' _shift_right: [start, labels[:, :-1]] with -100 replaced by pad.
at::Tensor shift_right(const at::Tensor& labels, int64_t start, int64_t pad);

}  // namespace recast::models
