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

at::Tensor AttentionCoreImpl::mix(const at::Tensor&, const ops::AttentionMask&, KVCache*) {
  throw Error(msg("attention core '", describe(), "' takes q, k, v, not the attention's input"));
}

at::Tensor AttentionCoreImpl::softmax(const at::Tensor& q, at::Tensor k, at::Tensor v,
                                      const ops::AttentionMask& mask, KVCache* cache) const {
  if (cache != nullptr) std::tie(k, v) = cache->append(static_cast<size_t>(spec_.layer), k, v);
  return ops::attention(q, k, v, mask, spec_.scale);
}

}  // namespace recast::layers
