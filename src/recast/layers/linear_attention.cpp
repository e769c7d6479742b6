#include "recast/layers/linear_attention.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::layers {

Registry<int>& feature_map_registry() {
  static Registry<int> registry = [] {
    Registry<int> r("feature map");
    r.add("t2r", "relu(W_h x + b_h) per head, shared by q and k, queries scaled by d^-1/2 (T2R)", 0);
    r.add("elu1", "1 + elu(x), no parameters (linear transformer baseline)", 0);
    r.add("hedgehog", "softmax([W_h x, -W_h x]) per head (LoLCATs' Hedgehog)", 0);
    return r;
  }();
  return registry;
}

FeatureMapImpl::FeatureMapImpl(std::string kind, int64_t heads, int64_t head_dim, int64_t features)
    : kind_(std::move(kind)), heads_(heads), head_dim_(head_dim), features_(features) {
  feature_map_registry().get(kind_);
  if (kind_ == "elu1") {
    features_ = head_dim_;
    return;
  }
  RECAST_CHECK(features_ >= 1, "--feature-dim: expected >= 1, found ", features_);
  if (kind_ == "hedgehog") {
    RECAST_CHECK(features_ % 2 == 0, "hedgehog feature map: --feature-dim must be even, found ",
                 features_);
    weight_ = register_parameter("weight", torch::empty({heads_, features_ / 2, head_dim_}));
  } else {
    weight_ = register_parameter("weight", torch::empty({heads_, features_, head_dim_}));
    bias_ = register_parameter("bias", torch::empty({heads_, features_}));
  }
  reset_parameters();
}

void FeatureMapImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  if (kind_ == "hedgehog" && features_ / 2 == head_dim_) {
    weight_.copy_(torch::eye(head_dim_).expand({heads_, head_dim_, head_dim_}));
  } else if (weight_.defined()) {
    weight_.uniform_(-bound, bound);
  }
  if (bias_.defined()) bias_.uniform_(-bound, bound);
}

at::Tensor FeatureMapImpl::forward(const at::Tensor& x) {
  RECAST_CHECK(x.dim() == 4 && x.size(1) == heads_ && x.size(3) == head_dim_,
               "feature map: expected [B, ", heads_, ", T, ", head_dim_, "], found ",
               shape_string(x.sizes()));
  if (kind_ == "elu1") return at::elu(x) + 1.0;
  // [B, H, T, d] x [H, F, d] -> [B, H, T, F]
  at::Tensor proj = at::matmul(x, weight_.to(x.scalar_type()).transpose(-1, -2).unsqueeze(0));
  if (kind_ == "hedgehog") return at::softmax(at::cat({proj, -proj}, -1), -1);
  return at::relu(proj + bias_.to(x.scalar_type()).unsqueeze(0).unsqueeze(2));
}

std::optional<T2RConfig> T2RConfig::from(const nlohmann::json& config) {
  auto it = config.find("recast_t2r");
  if (it == config.end()) return std::nullopt;
  return parse(*it);
}

T2RConfig T2RConfig::parse(const nlohmann::json& j) {
  T2RConfig c;
  try {
    c.feature_map = j.at("feature_map").get<std::string>();
    c.features = j.at("feature_dim").get<int64_t>();
    c.eps = j.value("eps", 1e-2);
    c.chunk = j.value("chunk", int64_t{64});
    for (const auto& l : j.at("layers")) c.layers.insert(l.get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    throw Error(msg("config 'recast_t2r': ", e.what()));
  }
  feature_map_registry().get(c.feature_map);
  RECAST_CHECK(c.eps > 0, "config 'recast_t2r': eps must be > 0, found ", c.eps);
  RECAST_CHECK(c.chunk >= 1, "config 'recast_t2r': chunk must be >= 1, found ", c.chunk);
  RECAST_CHECK(c.feature_map == "elu1" || (c.features >= 1 && c.features <= 65536),
               "config 'recast_t2r': feature_dim must be in [1, 65536], found ", c.features);
  return c;
}

nlohmann::json T2RConfig::to_json() const {
  return {{"feature_map", feature_map}, {"feature_dim", features}, {"eps", eps},
          {"chunk", chunk}, {"layers", std::vector<int64_t>(layers.begin(), layers.end())}};
}

at::Tensor t2r_attention(FeatureMap& phi, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const at::Tensor& key_padding,
                         const T2RConfig& config, ops::LinearState* state) {
  // T2R scales the queries before the feature map (the softmax scale's place).
  const double scale = phi->kind() == "t2r" ? 1.0 / std::sqrt(static_cast<double>(q.size(3))) : 1.0;
  at::Tensor fq = phi->forward(q * scale), fk = phi->forward(k);
  ops::LinearAttentionOptions o{config.eps, config.chunk, /*reference=*/false};
  if (state == nullptr) return ops::linear_attention_chunked(fq, fk, v, key_padding, o);
  if (q.size(2) == 1) return ops::linear_attention_recurrent(fq, fk, v, *state, key_padding, o);
  ops::LinearState next;
  at::Tensor y = ops::linear_attention_chunked(fq, fk, v, key_padding, o, state, &next);
  if (state->defined() && !at::GradMode::is_enabled() && state->s.sizes() == next.s.sizes()) {
    // A static decoding state keeps its tensors (a captured step reads them).
    state->s.copy_(next.s);
    state->z.copy_(next.z);
  } else {
    *state = next;
  }
  return y;
}

at::Tensor TransferProbe::compare(const at::Tensor& y_lin, const at::Tensor& y_soft) {
  const at::Tensor target = y_soft.detach().to(at::kFloat);
  const at::Tensor diff = y_lin.to(at::kFloat) - target;
  mse = diff.pow(2).mean();
  relative = (diff.detach().norm() / target.norm().clamp_min(1e-12)).item<double>();
  return y_soft;
}

T2RAttentionImpl::T2RAttentionImpl(AttentionSpec spec, T2RConfig config)
    : AttentionCoreImpl(spec), config_(std::move(config)) {
  feature_map = register_module(
      "feature_map", FeatureMap(config_.feature_map, spec.heads, spec.head_dim, config_.features));
}

at::Tensor T2RAttentionImpl::forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const ops::AttentionMask& mask, KVCache* cache) {
  const int64_t t = q.size(2), groups = q.size(1) / k.size(1);
  at::Tensor padding;
  // (A fixed-shape step decodes a real token: its key_padding is the buffer's.)
  if (mask.key_padding.defined() && !mask.slot.defined()) {
    padding = mask.key_padding.narrow(1, mask.query_offset, t);
  }
  ops::LinearState* state =
      cache ? &cache->linear_state(static_cast<size_t>(spec().layer)) : nullptr;
  at::Tensor y = t2r_attention(feature_map, q, groups > 1 ? ops::repeat_kv(k, groups) : k,
                               groups > 1 ? ops::repeat_kv(v, groups) : v, padding, config_, state);
  if (probe.on) {
    RECAST_CHECK(cache == nullptr, "attention transfer runs without a KV cache");
    y = probe.compare(y, softmax(q, k, v, mask, nullptr));
  }
  return y;
}

std::string T2RAttentionImpl::describe() const {
  return msg(config_.feature_map, " linear attention (",
             config_.feature_map == "elu1" ? std::string("head_dim") : std::to_string(config_.features),
             " features, eps ", config_.eps, ")");
}

}  // namespace recast::layers
