#include "recast/layers/attention_core.h"

#include "recast/core/error.h"

#include <torch/torch.h>

namespace recast::layers {

std::pair<at::Tensor, at::Tensor> KVCache::append(size_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  at::Tensor& ck = keys[layer];
  at::Tensor& cv = values[layer];
  ck = ck.defined() ? at::cat({ck, k}, 2) : k;
  cv = cv.defined() ? at::cat({cv, v}, 2) : v;
  return {ck, cv};
}

void KVCache::keep_last(size_t layer, int64_t keep) {
  if (keys.size() <= layer || !keys[layer].defined() || keys[layer].size(2) <= keep) return;
  const int64_t n = keys[layer].size(2);
  // A copy, so the dropped keys are freed rather than kept alive by a view.
  keys[layer] = keys[layer].slice(2, n - keep).contiguous();
  values[layer] = values[layer].slice(2, n - keep).contiguous();
}

at::Tensor AttentionCoreImpl::mix(const at::Tensor&, const ops::AttentionMask&, KVCache*) {
  throw Error(msg("attention core '", describe(), "' takes q, k, v, not the attention's input"));
}

at::Tensor AttentionCoreImpl::softmax(const at::Tensor& q, at::Tensor k, at::Tensor v,
                                      const ops::AttentionMask& mask, KVCache* cache) const {
  const auto layer = static_cast<size_t>(spec_.layer);
  if (cache != nullptr) std::tie(k, v) = cache->append(layer, k, v);
  if (spec_.window <= 0 || !mask.causal) return ops::attention(q, k, v, mask, spec_.scale);
  ops::AttentionMask m = mask;
  m.window = spec_.window;
  // The cache holds the last keys only: they start at this position.
  m.key_offset = mask.query_offset + q.size(2) - k.size(2);
  if (m.key_padding.defined() && m.key_offset > 0 && m.key_padding.size(1) == m.key_offset + k.size(2)) {
    m.key_padding = m.key_padding.slice(1, m.key_offset);
  }
  at::Tensor y = ops::attention(q, k, v, m, spec_.scale);
  if (cache != nullptr) cache->keep_last(layer, spec_.window - 1);
  return y;
}

}  // namespace recast::layers
