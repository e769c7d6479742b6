#include "recast/layers/conv_attention.h"

#include "recast/core/error.h"
#include "recast/ops/attention.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

namespace recast::layers {
namespace {

int64_t default_qk_dim(int64_t in, int64_t heads) {
  const int64_t d = std::max<int64_t>(16, (in + heads - 1) / heads);
  return (d + 7) / 8 * 8;
}

// Tap offsets (dy, dx) of the K^2 heads, head i*K + j -> (i - c, j - c).
at::Tensor tap_offsets(int64_t k) {
  at::Tensor r = at::arange(k, at::kFloat) - static_cast<double>(k / 2);
  auto grid = at::meshgrid({r, r}, "ij");
  return at::stack({grid[0].reshape(-1), grid[1].reshape(-1)}, 1);  // [K^2, 2]
}

// Input-pixel coordinates [N, 2] of a grid of h x w points at (y * step + shift).
at::Tensor grid_coords(int64_t h, int64_t w, int64_t step, int64_t shift,
                       const at::TensorOptions& opts) {
  at::Tensor ys = at::arange(h, opts) * static_cast<double>(step) + static_cast<double>(shift);
  at::Tensor xs = at::arange(w, opts) * static_cast<double>(step) + static_cast<double>(shift);
  auto g = at::meshgrid({ys, xs}, "ij");
  return at::stack({g[0].reshape(-1), g[1].reshape(-1)}, 1);
}

}  // namespace

ConvAttentionImpl::ConvAttentionImpl(const ConvAttentionOptions& o) : o_(o) {
  RECAST_CHECK(o.in >= 1 && o.out >= 1, "ConvAttention: channels must be >= 1, found ", o.in,
               " -> ", o.out);
  RECAST_CHECK(o.kernel >= 1 && o.kernel % 2 == 1, "ConvAttention: kernel size must be odd, found ",
               o.kernel);
  RECAST_CHECK(o.stride == 1 || o.stride == 2, "ConvAttention: stride must be 1 or 2, found ",
               o.stride);
  RECAST_CHECK(!o.alpha || *o.alpha > 0, "ConvAttention: alpha must be > 0, found ", o.alpha.value_or(0));
  const int64_t heads = o.kernel * o.kernel;
  qk_dim_ = o.qk_dim > 0 ? o.qk_dim : default_qk_dim(o.in, heads);
  weight = register_parameter("weight", at::empty({o.out, o.in, o.kernel, o.kernel}));
  if (o.bias) bias = register_parameter("bias", at::zeros({o.out}));
  gate = register_parameter("gate", at::zeros({heads}));
  qk = register_module("qk", torch::nn::Linear(torch::nn::LinearOptions(o.in, 2 * heads * qk_dim_).bias(false)));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));  // as torch.nn.Conv2d
  qk->weight.normal_(0.0, 0.02);                               // as ConViT's linear layers
  if (o.alpha) {
    centers = register_parameter("centers", tap_offsets(o.kernel));
    alpha = register_parameter("alpha", at::full({heads}, *o.alpha));
  } else {
    centers = tap_offsets(o.kernel);  // fixed: not a parameter, not saved
  }
}

at::Tensor ConvAttentionImpl::offsets(int64_t h, int64_t w, const at::TensorOptions& opts) const {
  const int64_t c = o_.kernel / 2;
  const at::Tensor q = grid_coords(out_size(h), out_size(w), o_.stride, 0, opts);  // [Lq, 2]
  const at::Tensor key = grid_coords(h + 2 * c, w + 2 * c, 1, -c, opts);           // [Lk, 2]
  return key.unsqueeze(0) - q.unsqueeze(1);
}

at::Tensor ConvAttentionImpl::positional(int64_t h, int64_t w, const at::Tensor& like) {
  const auto opts = like.options().dtype(at::kFloat);
  const at::Tensor rel = offsets(h, w, opts);                      // [Lq, Lk, 2]
  const at::Tensor ctr = centers.to(opts).view({heads(), 1, 1, 2});
  const at::Tensor d2 = (rel.unsqueeze(0) - ctr).pow(2).sum(-1);   // [heads, Lq, Lk]
  if (hard()) return d2.eq(0).to(at::kFloat);                      // one-hot: the tap
  return (-alpha.to(at::kFloat).view({heads(), 1, 1}) * d2).softmax(-1);
}

at::Tensor ConvAttentionImpl::queries_of(const at::Tensor& x) const {
  if (o_.stride == 1) return x;
  return x.slice(2, 0, x.size(2), o_.stride).slice(3, 0, x.size(3), o_.stride);
}

std::pair<at::Tensor, at::Tensor> ConvAttentionImpl::queries_keys(const at::Tensor& x) const {
  const int64_t b = x.size(0), n = x.size(2) * x.size(3), heads_ = heads(), d = qk_dim_;
  const at::Tensor xq = queries_of(x);
  const int64_t lq = xq.size(2) * xq.size(3);
  const at::Tensor wq = qk->weight.narrow(0, 0, heads_ * d).to(x.scalar_type());
  const at::Tensor wk = qk->weight.narrow(0, heads_ * d, heads_ * d).to(x.scalar_type());
  return {at::linear(xq.flatten(2).transpose(1, 2), wq).view({b, lq, heads_, d}).transpose(1, 2),
          at::linear(x.flatten(2).transpose(1, 2), wk).view({b, n, heads_, d}).transpose(1, 2)};
}

at::Tensor ConvAttentionImpl::content_scores(const at::Tensor& x) {
  const auto [q, k] = queries_keys(x.to(at::kFloat));
  return (at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(qk_dim_)))
      .softmax(-1);  // [B, heads, Lq, HW]
}

at::Tensor ConvAttentionImpl::forward_reference(const at::Tensor& x) {
  RECAST_CHECK(x.dim() == 4 && x.size(1) == o_.in, "ConvAttention: expected input [B, ", o_.in,
               ", H, W], found ", x.sizes());
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3), c = o_.kernel / 2;
  const int64_t oh = out_size(h), ow = out_size(w);
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor p = positional(h, w, x);                   // [heads, Lq, Lk]
  // Content scores placed on the padded key grid (the zero ring gets none).
  at::Tensor s = content_scores(xf).view({b, heads(), oh * ow, h, w});
  s = at::constant_pad_nd(s, {c, c, c, c}).flatten(3);       // [B, heads, Lq, Lk]
  const at::Tensor g = gate.to(at::kFloat).view({1, heads(), 1, 1});
  const at::Tensor a = p.unsqueeze(0) + g * (s - p.unsqueeze(0));
  const at::Tensor keys = at::constant_pad_nd(xf, {c, c, c, c}).flatten(2).transpose(1, 2);  // [B, Lk, in]
  const at::Tensor z = at::matmul(a, keys.unsqueeze(1));      // [B, heads, Lq, in]
  const at::Tensor wm = weight.to(at::kFloat).flatten(2);     // [out, in, heads]
  at::Tensor y = at::einsum("bhqc,och->boq", {z, wm});
  if (bias.defined()) y = y + bias.to(at::kFloat).view({1, -1, 1});
  return y.view({b, o_.out, oh, ow}).to(x.scalar_type());
}

at::Tensor ConvAttentionImpl::content(const at::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(2) * x.size(3), heads_ = heads(), d = qk_dim_;
  const at::Tensor tokens = x.flatten(2).transpose(1, 2);  // [B, HW, in]
  auto [q, k] = queries_keys(x);                           // [B, heads, Lq | HW, d]
  const int64_t lq = q.size(2);
  // g_h W_h as [out, in, heads].
  const at::Tensor wg = weight.to(x.scalar_type()).flatten(2) * gate.to(x.scalar_type());
  const int64_t width = std::max<int64_t>(d, 64), chunks = o_.in / width;
  const bool chunked = o_.in % width == 0 &&
                       (o_.content == ContentPath::Chunked ||
                        (o_.content == ContentPath::Automatic && x.is_cuda() && n >= 196 && d >= 64));
  if (!chunked) {
    const at::Tensor wv = wg.permute({2, 0, 1}).reshape({heads_ * o_.out, o_.in});
    const at::Tensor v = at::linear(tokens, wv).view({b, n, heads_, o_.out}).transpose(1, 2);
    return ops::attention(q, k, v, {}).sum(1);  // [B, Lq, out]
  }
  // Head h, chunk j attends with (q_h, k_h) over x[:, :, j*w : (j+1)*w]; zero
  // columns added to q and k leave the scores as they are.
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto fold = [&](const at::Tensor& t) {  // [B, heads, L, d] -> [B, heads * chunks, L, w]
    const at::Tensor p = width > d ? at::constant_pad_nd(t, {0, width - d}) : t;
    return p.unsqueeze(2).expand({b, heads_, chunks, t.size(2), width}).reshape({b, heads_ * chunks, t.size(2), width});
  };
  const at::Tensor v = tokens.view({b, n, chunks, width}).permute({0, 2, 1, 3}).unsqueeze(1)
                           .expand({b, heads_, chunks, n, width})
                           .reshape({b, heads_ * chunks, n, width});
  const at::Tensor z = ops::attention(fold(q), fold(k), v, {}, scale)  // [B, heads * chunks, Lq, w]
                           .view({b, heads_, chunks, lq, width})
                           .permute({0, 3, 1, 2, 4})
                           .reshape({b, lq, heads_ * o_.in});          // head-major, then channel
  return at::linear(z, wg.permute({0, 2, 1}).reshape({o_.out, heads_ * o_.in}));
}

at::Tensor ConvAttentionImpl::forward(const at::Tensor& x) {
  RECAST_CHECK(x.dim() == 4 && x.size(1) == o_.in, "ConvAttention: expected input [B, ", o_.in,
               ", H, W], found ", x.sizes());
  if (capture_input) captured_input = x.detach();
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3), c = o_.kernel / 2;
  const int64_t oh = out_size(h), ow = out_size(w);
  const at::Tensor one_minus_g = (1 - gate).to(x.scalar_type());
  at::Tensor y;
  if (hard()) {
    // One-hot positional attention on the zero-padded grid is a gather of the
    // tap, so sum_h W_h (1 - g_h) P_h x is conv2d with the taps scaled.
    const at::Tensor wt = weight.to(x.scalar_type()) * one_minus_g.view({1, 1, o_.kernel, o_.kernel});
    y = at::conv2d(x, wt, bias.defined() ? bias.to(x.scalar_type()) : at::Tensor(), o_.stride, c);
  } else {
    const at::Tensor p = positional(h, w, x).to(x.scalar_type());                  // [heads, Lq, Lk]
    const at::Tensor keys = at::constant_pad_nd(x, {c, c, c, c}).flatten(2).transpose(1, 2);  // [B, Lk, in]
    const at::Tensor z = at::matmul(p.unsqueeze(0), keys.unsqueeze(1));            // [B, heads, Lq, in]
    const at::Tensor wm = weight.to(x.scalar_type()).flatten(2) * one_minus_g;     // [out, in, heads]
    y = at::einsum("bhqc,och->boq", {z, wm}).view({b, o_.out, oh, ow});
    if (bias.defined()) y = y + bias.to(x.scalar_type()).view({1, -1, 1, 1});
  }
  const bool need_grad = at::GradMode::is_enabled() &&
                         (gate.requires_grad() || qk->weight.requires_grad() || x.requires_grad());
  if (!need_grad && !gate.ne(0).any().item<bool>()) return y;  // content branch closed
  const at::Tensor z = content(x);                                                    // [B, Lq, out]
  return y + z.transpose(1, 2).reshape({b, o_.out, oh, ow});
}

ConvAttentionImpl::Maps ConvAttentionImpl::attention_maps(const at::Tensor& x_one) {
  RECAST_CHECK(x_one.dim() == 4 && x_one.size(0) == 1, "attention maps: expected one input [1, ",
               o_.in, ", H, W], found ", x_one.sizes());
  torch::NoGradGuard no_grad;
  const int64_t h = x_one.size(2), w = x_one.size(3), c = o_.kernel / 2;
  const int64_t oh = out_size(h), ow = out_size(w);
  const at::Tensor p = positional(h, w, x_one);
  at::Tensor s = content_scores(x_one.to(at::kFloat)).view({1, heads(), oh * ow, h, w});
  s = at::constant_pad_nd(s, {c, c, c, c}).flatten(3)[0];
  const at::Tensor g = gate.to(at::kFloat).view({heads(), 1, 1});
  return {p + g * (s - p), oh, ow, h + 2 * c, w + 2 * c};
}

at::Tensor ConvAttentionImpl::mean_attention_distance(const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto opts = x.options().dtype(at::kFloat);
  const at::Tensor dist = offsets(x.size(2), x.size(3), opts).pow(2).sum(-1).sqrt();  // [Lq, Lk]
  at::Tensor total = at::zeros({heads()}, opts);
  for (int64_t i = 0; i < x.size(0); ++i) {
    const Maps m = attention_maps(x.narrow(0, i, 1));
    total += (m.attention * dist).sum(-1).mean(-1);
  }
  return total / static_cast<double>(x.size(0));
}

nlohmann::json conv_attention_stats(torch::nn::Module& model,
                                    const std::function<void()>& run_forward) {
  std::vector<std::pair<std::string, ConvAttentionImpl*>> layers;
  for (const auto& item : model.named_modules("", false)) {
    if (auto* ca = item.value()->as<ConvAttention>()) layers.emplace_back(item.key(), ca);
  }
  if (layers.empty()) return nullptr;
  torch::NoGradGuard no_grad;
  for (auto& l : layers) l.second->capture_input = true;
  run_forward();
  nlohmann::json out = nlohmann::json::object();
  auto to_vector = [](const at::Tensor& t) {
    const at::Tensor c = t.detach().to(at::kCPU, at::kDouble).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  for (auto& [name, ca] : layers) {
    ca->capture_input = false;
    nlohmann::json j = {{"gate", to_vector(ca->gate)}};
    if (ca->captured_input.defined()) {
      j["distance"] = to_vector(ca->mean_attention_distance(ca->captured_input));
    }
    ca->captured_input = at::Tensor();
    out[name] = j;
  }
  return out;
}

std::optional<TcnnConfig> TcnnConfig::from(const nlohmann::json& config) {
  auto found = config.find("recast_tcnn");
  if (found == config.end()) return std::nullopt;
  return parse(*found);
}

TcnnConfig TcnnConfig::parse(const nlohmann::json& block) {
  const nlohmann::json* it = &block;
  TcnnConfig c;
  try {
    for (const auto& l : it->at("layers")) c.layers.insert(l.get<std::string>());
    if (it->contains("alpha") && !it->at("alpha").is_null()) c.alpha = it->at("alpha").get<double>();
    c.qk_dim = it->value("qk_dim", int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    throw Error(msg("config 'recast_tcnn': ", e.what()));
  }
  RECAST_CHECK(!c.alpha || *c.alpha > 0, "config 'recast_tcnn': alpha must be > 0, found ", *c.alpha);
  RECAST_CHECK(c.qk_dim >= 0, "config 'recast_tcnn': qk_dim must be >= 0, found ", c.qk_dim);
  return c;
}

nlohmann::json TcnnConfig::to_json() const {
  return {{"layers", std::vector<std::string>(layers.begin(), layers.end())},
          {"alpha", alpha ? nlohmann::json(*alpha) : nlohmann::json(nullptr)},
          {"qk_dim", qk_dim}};
}

}  // namespace recast::layers
