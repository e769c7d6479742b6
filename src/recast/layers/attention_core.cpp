#include "recast/layers/attention_core.h"

#include "recast/core/error.h"

#include <torch/torch.h>

namespace recast::layers {

namespace {

// Buffers [B, H, positions, d] like `k`, the first `held` positions copied
// from `from` (when given). Zeros, not garbage: a fixed-shape step reads the
// unwritten positions (masked, but a NaN there would survive the mask).
at::Tensor buffer_like(const at::Tensor& k, int64_t positions, const at::Tensor& from = {},
                       int64_t start = 0, int64_t held = 0) {
  at::Tensor b = at::zeros({k.size(0), k.size(1), positions, k.size(3)}, k.options());
  if (held > 0) b.narrow(2, 0, held).copy_(from.narrow(2, start, held));
  return b;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> KVCache::append(size_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  at::Tensor& ck = keys[layer];
  at::Tensor& cv = values[layer];
  if (fixed_step()) {
    // Fixed shapes: this token's keys at index `slot`, every buffer position
    // returned (`valid` masks those not written).
    RECAST_CHECK(ck.defined() && k.size(2) == 1 && ck.size(0) == k.size(0),
                 "KV cache: a fixed-shape step needs a prefilled static cache and one token, found ",
                 k.sizes());
    ck.index_copy_(2, slot, k.to(ck.scalar_type()));
    cv.index_copy_(2, slot, v.to(cv.scalar_type()));
    return {ck, cv};
  }
  if (reserved_ == 0) {
    ck = ck.defined() ? at::cat({ck, k}, 2) : k;
    cv = cv.defined() ? at::cat({cv, v}, 2) : v;
    return {ck, cv};
  }
  if (spans_.size() <= layer) spans_.resize(layer + 1);
  Span& sp = spans_[layer];
  const int64_t t = k.size(2);
  auto fits = [&](const at::Tensor& buf, const at::Tensor& x) {
    return buf.defined() && buf.size(0) == x.size(0) && buf.size(1) == x.size(1) &&
           buf.size(3) == x.size(3) && buf.scalar_type() == x.scalar_type() &&
           buf.device() == x.device();
  };
  if (!fits(ck, k) || !fits(cv, v)) {  // first use, or another batch: fresh buffers
    const int64_t n = std::max(reserved_, t);
    ck = buffer_like(k, n), cv = buffer_like(v, n);
    sp = Span{};
  }
  if (sp.end + t > ck.size(2)) {
    const int64_t held = sp.end - sp.start;
    if (held + t <= ck.size(2)) {
      // A rolling window's keys moved to the front (through a copy: the
      // ranges may overlap).
      const at::Tensor hk = ck.narrow(2, sp.start, held).clone(), hv = cv.narrow(2, sp.start, held).clone();
      ck.narrow(2, 0, held).copy_(hk);
      cv.narrow(2, 0, held).copy_(hv);
    } else {
      int64_t n = ck.size(2);
      while (n < held + t) n *= 2;
      ck = buffer_like(k, n, ck, sp.start, held);
      cv = buffer_like(v, n, cv, sp.start, held);
    }
    sp = Span{0, held};
  }
  ck.narrow(2, sp.end, t).copy_(k);
  cv.narrow(2, sp.end, t).copy_(v);
  sp.end += t;
  return {ck.narrow(2, sp.start, sp.end - sp.start), cv.narrow(2, sp.start, sp.end - sp.start)};
}

void KVCache::keep_last(size_t layer, int64_t keep) {
  if (reserved_ > 0) {
    if (spans_.size() > layer) spans_[layer].start = std::max(spans_[layer].start, spans_[layer].end - keep);
    return;
  }
  if (keys.size() <= layer || !keys[layer].defined() || keys[layer].size(2) <= keep) return;
  const int64_t n = keys[layer].size(2);
  // A copy, so the dropped keys are freed rather than kept alive by a view.
  keys[layer] = keys[layer].slice(2, n - keep).contiguous();
  values[layer] = values[layer].slice(2, n - keep).contiguous();
}

std::pair<at::Tensor, at::Tensor> KVCache::past(size_t layer) const {
  if (keys.size() <= layer || !keys[layer].defined()) return {};
  if (reserved_ == 0) return {keys[layer], values[layer]};
  const Span sp = spans_.size() > layer ? spans_[layer] : Span{};
  return {keys[layer].narrow(2, sp.start, sp.end - sp.start),
          values[layer].narrow(2, sp.start, sp.end - sp.start)};
}

int64_t KVCache::held(size_t layer) const {
  const at::Tensor k = past(layer).first;
  return k.defined() ? k.size(2) : 0;
}

void KVCache::reserve(int64_t positions) {
  RECAST_CHECK(positions >= 1, "KV cache: reserve needs >= 1 position, found ", positions);
  RECAST_CHECK(tokens == 0, "KV cache: reserve before the first token");
  reserved_ = positions;
}

void KVCache::set_fixed_step(const at::Tensor& at_slot, const at::Tensor& keys_valid) {
  RECAST_CHECK(reserved_ > 0, "KV cache: fixed-shape steps need a static cache (reserve)");
  slot = at_slot, valid = keys_valid;
}

void KVCache::end_fixed_steps(int64_t total_tokens) {
  slot = at::Tensor(), valid = at::Tensor();
  for (Span& sp : spans_) sp.end = total_tokens;
  tokens = total_tokens;
}

void KVCache::clear() {
  tokens = 0;
  slot = at::Tensor(), valid = at::Tensor();
  cross_keys.clear(), cross_values.clear();
  if (reserved_ == 0) {
    keys.clear(), values.clear(), linear.clear(), windows.clear();
    return;
  }
  for (Span& sp : spans_) sp = Span{};
  for (auto& s : linear) {
    if (s.defined()) s.s.zero_(), s.z.zero_();
  }
  for (auto& w : windows) {
    if (w.defined()) w.zero_();
  }
}

double KVCache::bytes() const {
  double n = 0;
  for (const auto* list : {&keys, &values, &windows, &cross_keys, &cross_values}) {
    for (const auto& t : *list) n += t.defined() ? static_cast<double>(t.nbytes()) : 0.0;
  }
  for (const auto& s : linear) {
    if (s.defined()) n += static_cast<double>(s.s.nbytes() + s.z.nbytes());
  }
  return n;
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
  // A fixed-shape step attends over the whole buffer: the window is a mask.
  if (mask.slot.defined()) return ops::attention(q, k, v, m, spec_.scale);
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
