#include "recast/models/decoder.h"

#include "recast/core/error.h"

#include <torch/torch.h>

namespace recast::models {

at::Tensor check_input_ids(const Batch& batch, int64_t vocab, int64_t max_positions,
                           int64_t offset) {
  const at::Tensor& ids = batch.input_ids;
  RECAST_CHECK(ids.defined(), "input_ids: missing (a language model takes int64 [B, T])");
  RECAST_CHECK(ids.dim() == 2 && ids.size(1) > 0, "input_ids: expected [B, T] with T > 0, found ",
               ids.sizes());
  RECAST_CHECK(!ids.is_floating_point() && !ids.is_complex() && ids.scalar_type() != at::kBool,
               "input_ids: expected integer token ids, found ", ids.scalar_type());
  at::Tensor host = ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    if (p[i] < 0 || p[i] >= vocab) {
      throw Error(msg("input_ids: token id ", p[i], " at [", i / host.size(1), ", ",
                      i % host.size(1), "] is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  RECAST_CHECK(offset + ids.size(1) <= max_positions, "input_ids: ", offset + ids.size(1),
               " positions exceed the model's context of ", max_positions);
  return ids.scalar_type() == at::kLong ? ids : ids.to(at::kLong);
}

namespace {

ops::AttentionMask decoder_mask(const Batch& batch, const at::Tensor& ids, int64_t offset) {
  ops::AttentionMask mask;
  mask.causal = true;
  mask.query_offset = offset;
  if (batch.attention_mask.defined()) {
    const at::Tensor& am = batch.attention_mask;
    RECAST_CHECK(am.dim() == 2 && am.size(0) == ids.size(0) && am.size(1) == offset + ids.size(1),
                 "attention_mask: expected [", ids.size(0), ", ", offset + ids.size(1), "], found ",
                 am.sizes());
    mask.key_padding = am.ne(0);
  }
  return mask;
}

at::Tensor decoder_positions(const Batch& batch, const at::Tensor& ids, int64_t offset,
                             int64_t max_positions) {
  const int64_t t = ids.size(1);
  if (!batch.position_ids.defined()) {
    return at::arange(offset, offset + t, ids.options().dtype(at::kLong)).view({1, t});
  }
  const at::Tensor& p = batch.position_ids;
  RECAST_CHECK(p.dim() == 2 && p.size(0) == ids.size(0) && p.size(1) == t,
               "position_ids: expected [", ids.size(0), ", ", t, "], found ", p.sizes());
  RECAST_CHECK(!p.is_floating_point() && p.scalar_type() != at::kBool,
               "position_ids: expected integers, found ", p.scalar_type());
  const at::Tensor host = p.to(at::kCPU, at::kLong);
  const int64_t lo = host.min().item<int64_t>(), hi = host.max().item<int64_t>();
  RECAST_CHECK(lo >= 0 && hi < max_positions, "position_ids: values in [", lo, ", ", hi,
               "], expected within [0, ", max_positions, ")");
  return p.to(ids.device(), at::kLong);
}

}  // namespace

DecoderInputs decoder_inputs(const Batch& batch, int64_t vocab, int64_t max_positions,
                             const KVCache* cache) {
  DecoderInputs in;
  if (cache != nullptr && cache->fixed_step()) {
    const at::Tensor& ids = batch.input_ids;
    const at::Tensor& pos = batch.position_ids;
    RECAST_CHECK(ids.defined() && ids.dim() == 2 && ids.size(1) == 1 && ids.scalar_type() == at::kLong,
                 "input_ids: a fixed-shape step takes int64 [B, 1]");
    RECAST_CHECK(pos.defined() && pos.sizes() == ids.sizes() && pos.scalar_type() == at::kLong,
                 "position_ids: a fixed-shape step takes int64 [B, 1]");
    RECAST_CHECK(cache->valid.dim() == 2 && cache->valid.size(0) == ids.size(0),
                 "KV cache: valid keys [", ids.size(0), ", N] expected, found ", cache->valid.sizes());
    in.ids = ids;
    in.positions = pos;
    in.mask.causal = true;
    in.mask.key_padding = cache->valid;
    in.mask.slot = cache->slot;
    return in;
  }
  const int64_t offset = cache != nullptr ? cache->length() : 0;
  in.ids = check_input_ids(batch, vocab, max_positions, offset);
  in.mask = decoder_mask(batch, in.ids, offset);
  in.positions = decoder_positions(batch, in.ids, offset, max_positions);
  return in;
}

at::Tensor last_positions(const at::Tensor& x, int64_t keep) {
  const int64_t t = x.size(1);
  return keep <= 0 || keep >= t ? x : x.narrow(1, t - keep, keep);
}

void LmHead::init(torch::nn::Module& owner, int64_t width, int64_t vocab, bool tied) {
  tied_ = tied;
  if (!tied) {
    linear_ = owner.register_module(
        "lm_head", torch::nn::Linear(torch::nn::LinearOptions(width, vocab).bias(false)));
  }
}

at::Tensor LmHead::operator()(const at::Tensor& x, const at::Tensor& embedding) const {
  return tied_ ? at::linear(x, embedding) : at::linear(x, linear_->weight);
}

std::vector<std::string> LmHead::tied_names() const {
  return tied_ ? std::vector<std::string>{"lm_head.weight"} : std::vector<std::string>{};
}

int64_t sequence_classification_labels(const nlohmann::json& config, const char* architecture) {
  auto arch = config.find("architectures");
  if (arch == config.end() || !arch->is_array()) return 0;
  bool found = false;
  for (const auto& a : *arch) found = found || (a.is_string() && a.get<std::string>() == architecture);
  if (!found) return 0;
  int64_t labels = 0;
  if (auto it = config.find("id2label"); it != config.end() && it->is_object()) {
    labels = static_cast<int64_t>(it->size());
  } else {
    labels = cfg_int(config, "num_labels", 2);
  }
  RECAST_CHECK(labels >= 1, "config: ", architecture, " needs at least one label, found ", labels);
  return labels;
}

at::Tensor last_token_states(const at::Tensor& x, const at::Tensor& attention_mask) {
  const int64_t b = x.size(0), t = x.size(1);
  at::Tensor last;
  if (attention_mask.defined()) {
    last = attention_mask.to(x.device(), at::kLong).sum(1).sub(1).clamp_min(0);
  } else {
    last = at::full({b}, t - 1, x.options().dtype(at::kLong));
  }
  return x.index({at::arange(b, last.options()), last});
}

}  // namespace recast::models
