#include "recast/layers/factorized.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::layers {

// ---------------------------------------------------------------- spectral init

Spectrum spectrum(const at::Tensor& w) {
  RECAST_CHECK(w.dim() >= 2, "spectrum: expected a weight of 2 or more dimensions, found ",
               shape_string(w.sizes()));
  torch::NoGradGuard no_grad;
  const at::Tensor m = w.detach().reshape({w.size(0), -1}).to(at::kCPU, at::kDouble);
  auto [a, s, bh] = at::linalg_svd(m, /*full_matrices=*/false);
  return {a, s, bh.t().contiguous()};
}

Factors spectral_factors(const Spectrum& sp, int64_t rank) {
  RECAST_CHECK(rank >= 1 && rank <= sp.full_rank(), "spectral init: rank ", rank,
               " outside 1..", sp.full_rank());
  const at::Tensor root = sp.s.narrow(0, 0, rank).sqrt();
  return {sp.a.narrow(1, 0, rank) * root, sp.b.narrow(1, 0, rank) * root};
}

Factors balanced(const Factors& f) {
  torch::NoGradGuard no_grad;
  auto [qu, ru] = at::linalg_qr(f.u.to(at::kDouble), "reduced");
  auto [qv, rv] = at::linalg_qr(f.v.to(at::kDouble), "reduced");
  auto [p, s, qh] = at::linalg_svd(at::matmul(ru, rv.t()), /*full_matrices=*/false);
  const at::Tensor root = s.sqrt();
  return {at::matmul(qu, p) * root, at::matmul(qv, qh.t()) * root};
}

Whitened whitened_spectrum(const at::Tensor& w, const at::Tensor& gram, double damp) {
  torch::NoGradGuard no_grad;
  const at::Tensor m = w.detach().reshape({w.size(0), -1}).to(at::kCPU, at::kDouble);
  const int64_t n = m.size(1);
  RECAST_CHECK(gram.dim() == 2 && gram.size(0) == n && gram.size(1) == n,
               "whitening: expected an input Gram [", n, ", ", n, "], found ",
               shape_string(gram.sizes()));
  RECAST_CHECK(damp >= 0, "whitening: damping expected >= 0, found ", damp);
  const at::Tensor g = gram.to(at::kCPU, at::kDouble);
  const double scale = g.diagonal().mean().item<double>();
  const at::Tensor eye = at::eye(n, g.options());
  Whitened wh;
  if (!(scale > 0)) {  // the layer saw only zeros: no direction to prefer
    wh.chol = eye;
    wh.damp = 0;
  } else {
    double d = damp;
    for (;;) {
      auto [l, info] = at::linalg_cholesky_ex(g + (d * scale) * eye);
      if (info.item<int64_t>() == 0) {
        wh.chol = l;
        wh.damp = d;
        break;
      }
      RECAST_CHECK(d < 1, "whitening: the input Gram is not positive definite even with damping ",
                   d, " (non-finite inputs?)");
      d = std::min(1.0, std::max(d * 10, 1e-8));
    }
  }
  auto [a, s, bh] = at::linalg_svd(at::matmul(m, wh.chol), /*full_matrices=*/false);
  wh.sp = {a, s, bh.t().contiguous()};
  return wh;
}

Factors whitened_factors(const Whitened& wh, int64_t rank) {
  RECAST_CHECK(rank >= 1 && rank <= wh.sp.full_rank(), "whitened init: rank ", rank,
               " outside 1..", wh.sp.full_rank());
  torch::NoGradGuard no_grad;
  // W' = (A_r S_r) (L^{-T} B_r)^T; L^T V = B_r by a triangular solve.
  const at::Tensor u = wh.sp.a.narrow(1, 0, rank) * wh.sp.s.narrow(0, 0, rank);
  const at::Tensor v = at::linalg_solve_triangular(wh.chol.t(), wh.sp.b.narrow(1, 0, rank),
                                                   /*upper=*/true);
  return balanced({u, v});
}

double output_error(const at::Tensor& w, const Factors& f, const at::Tensor& gram) {
  torch::NoGradGuard no_grad;
  const at::Tensor m = w.detach().reshape({w.size(0), -1}).to(at::kCPU, at::kDouble);
  const at::Tensor g = gram.to(at::kCPU, at::kDouble);
  const at::Tensor e =
      m - at::matmul(f.u.to(at::kCPU, at::kDouble), f.v.to(at::kCPU, at::kDouble).t());
  const double total = (at::matmul(m, g) * m).sum().item<double>();
  if (!(total > 0)) return 0.0;
  return std::sqrt(std::max(0.0, (at::matmul(e, g) * e).sum().item<double>()) / total);
}

void InputGram::add(const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  const at::Tensor rows_x = x.detach().to(at::kDouble);
  const at::Tensor g = at::matmul(rows_x.t(), rows_x);
  sum = sum.defined() ? sum + g : g;
  rows += x.size(0);
}

double eckart_young_relative(const at::Tensor& s, int64_t rank) {
  const at::Tensor s2 = s.to(at::kDouble).square();
  const double total = s2.sum().item<double>();
  if (total <= 0 || rank >= s.size(0)) return 0.0;
  return std::sqrt(s2.narrow(0, rank, s.size(0) - rank).sum().item<double>() / total);
}

int64_t rank_for_ratio(double ratio, int64_t m, int64_t n) {
  if (!(ratio > 0 && ratio <= 1)) {
    throw UsageError(msg("--rank-ratio: expected a value in (0, 1], found ", ratio));
  }
  const auto full = static_cast<double>(std::min(m, n));
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(ratio * full)));
}

int64_t rank_for_energy(const at::Tensor& s, double energy) {
  if (!(energy > 0 && energy <= 1)) {
    throw UsageError(msg("--energy: expected a value in (0, 1], found ", energy));
  }
  return rank_keeping(energy_kept(s), energy);
}

std::vector<double> energy_kept(const at::Tensor& s) {
  const at::Tensor cumulative = s.to(at::kCPU, at::kDouble).square().cumsum(0);
  const double total = cumulative[-1].item<double>();
  const at::Tensor fractions =
      (total > 0 ? cumulative / total : at::ones_like(cumulative)).contiguous();
  const double* f = fractions.data_ptr<double>();
  return std::vector<double>(f, f + fractions.numel());
}

int64_t rank_keeping(const std::vector<double>& kept, double fraction) {
  // Relative slack for the rounding of the cumulative sum: fraction 1 keeps
  // everything but exact zeros.
  for (size_t r = 0; r < kept.size(); ++r) {
    if (kept[r] >= fraction * (1 - 1e-12)) return static_cast<int64_t>(r + 1);
  }
  return static_cast<int64_t>(kept.size());
}

at::Tensor frobenius_penalty(const at::Tensor& u, const at::Tensor& v) {
  RECAST_CHECK(u.dim() >= 2 && u.dim() == v.dim() && u.size(-1) == v.size(-1),
               "frobenius_penalty: expected U [..., m, r] and V [..., n, r], found ",
               shape_string(u.sizes()), " and ", shape_string(v.sizes()));
  const auto wide = [](const at::Tensor& t) {
    const auto type = t.scalar_type();
    return type == at::kHalf || type == at::kBFloat16 ? t.to(at::kFloat) : t;
  };
  const at::Tensor a = wide(u), b = wide(v);
  const at::Tensor gu = at::matmul(a.transpose(-2, -1), a);  // U^T U  [..., r, r]
  const at::Tensor gv = at::matmul(b.transpose(-2, -1), b);  // V^T V
  return 0.5 * (gu * gv).sum();
}

// ---------------------------------------------------------------- dispatch

bool factorized_is_faster(int64_t m, int64_t n, int64_t r, int64_t tokens, c10::Device device) {
  // Dense FLOPs over factorized FLOPs (equal to the parameter ratio).
  const double ratio = static_cast<double>(m) * static_cast<double>(n) /
                       (static_cast<double>(r) * static_cast<double>(m + n));
  if (!device.is_cuda()) return ratio >= 1.25;
  // On the GPU an eager product costs ~20 us of launch and dispatch whatever
  // its size (measured: dense 768^2 and 4096^2 at up to 128 tokens, H200),
  // so two of them lose until the dense product itself takes several times
  // that: from ~1e11 FLOPs (4096^2 at ~3k tokens) with a FLOP ratio >= 2.
  const double dense_flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) *
                             static_cast<double>(tokens);
  return dense_flops >= 1e11 && ratio >= 2.0;
}

// ---------------------------------------------------------------- FactorizedLinear

FactorizedLinearImpl::FactorizedLinearImpl(FactorizedLinearOptions options)
    : options_(options) {
  RECAST_CHECK(options_.in > 0 && options_.out > 0, "FactorizedLinear: bad sizes ", options_.in,
               " -> ", options_.out);
  RECAST_CHECK(options_.rank >= 1 && options_.rank <= std::min(options_.in, options_.out),
               "FactorizedLinear ", options_.in, " -> ", options_.out, ": rank ", options_.rank,
               " outside 1..", std::min(options_.in, options_.out));
  reset();
}

void FactorizedLinearImpl::reset() {
  const int64_t r = options_.rank;
  // Each factor N(0, s^2) with r s^4 = 1 / (3 in): the product has the
  // variance of torch.nn.Linear's default init. Models replace this with a
  // spectral init of their own dense init (init_weights).
  const double s = std::pow(1.0 / (3.0 * static_cast<double>(options_.in * r)), 0.25);
  weight_v = register_parameter("weight_v", torch::randn({r, options_.in}) * s);
  weight_u = register_parameter("weight_u", torch::randn({options_.out, r}) * s);
  if (options_.bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(options_.in));
    bias = register_parameter("bias", torch::empty({options_.out}).uniform_(-bound, bound));
  }
  merged_ = at::Tensor();
}

at::Tensor FactorizedLinearImpl::forward(const at::Tensor& x) {
  if (record_inputs) record_inputs->add(x.reshape({-1, options_.in}));
  const bool inference = !at::GradMode::is_enabled();
  bool dense = options_.dispatch == Dispatch::Dense;
  if (inference && options_.dispatch == Dispatch::Automatic) {
    const int64_t tokens = x.numel() / std::max<int64_t>(1, x.size(-1));
    dense = !factorized_is_faster(options_.out, options_.in, options_.rank, tokens, x.device());
  }
  if (dense && inference) {
    if (!merged_.defined() || merged_version_u_ != static_cast<int64_t>(weight_u._version()) ||
        merged_version_v_ != static_cast<int64_t>(weight_v._version()) ||
        merged_.device() != weight_u.device() || merged_.scalar_type() != weight_u.scalar_type()) {
      merged_ = at::matmul(weight_u, weight_v);
      merged_version_u_ = static_cast<int64_t>(weight_u._version());
      merged_version_v_ = static_cast<int64_t>(weight_v._version());
    }
    return at::linear(x, merged_, bias);
  }
  if (dense) return at::linear(x, dense_weight(), bias);  // training, forced dense
  return at::linear(at::linear(x, weight_v), weight_u, bias);
}

void FactorizedLinearImpl::set_from_dense(const at::Tensor& w) {
  RECAST_CHECK(w.dim() == 2 && w.size(0) == options_.out && w.size(1) == options_.in,
               "FactorizedLinear: dense weight expected [", options_.out, ", ", options_.in,
               "], found ", shape_string(w.sizes()));
  set_factors(spectral_factors(spectrum(w), options_.rank));
}

void FactorizedLinearImpl::set_factors(const Factors& f) {
  RECAST_CHECK(f.u.dim() == 2 && f.v.dim() == 2 && f.u.size(0) == options_.out &&
                   f.v.size(0) == options_.in && f.u.size(1) == options_.rank &&
                   f.v.size(1) == options_.rank,
               "FactorizedLinear: factors expected U [", options_.out, ", ", options_.rank,
               "] and V [", options_.in, ", ", options_.rank, "], found ",
               shape_string(f.u.sizes()), " and ", shape_string(f.v.sizes()));
  torch::NoGradGuard no_grad;
  weight_u.copy_(f.u);
  weight_v.copy_(f.v.t());
}

at::Tensor FactorizedLinearImpl::dense_weight() const { return at::matmul(weight_u, weight_v); }

Factors FactorizedLinearImpl::factors() const { return {weight_u, weight_v.t()}; }

// ---------------------------------------------------------------- FactorizedConv2d

FactorizedConv2dImpl::FactorizedConv2dImpl(FactorizedConv2dOptions options)
    : options_(std::move(options)) {
  RECAST_CHECK(options_.kernel.size() == 2 && options_.stride.size() == 2 &&
                   options_.padding.size() == 2 && options_.dilation.size() == 2,
               "FactorizedConv2d: kernel, stride, padding and dilation take 2 values each");
  const int64_t fan_in = options_.in * options_.kernel[0] * options_.kernel[1];
  RECAST_CHECK(options_.rank >= 1 && options_.rank <= std::min(options_.out, fan_in),
               "FactorizedConv2d ", options_.in, " -> ", options_.out, " (", options_.kernel[0],
               "x", options_.kernel[1], "): rank ", options_.rank, " outside 1..",
               std::min(options_.out, fan_in));
  reset();
}

void FactorizedConv2dImpl::reset() {
  const int64_t r = options_.rank;
  const int64_t fan_in = options_.in * options_.kernel[0] * options_.kernel[1];
  const double s = std::pow(1.0 / (3.0 * static_cast<double>(fan_in * r)), 0.25);
  weight_v = register_parameter(
      "weight_v", torch::randn({r, options_.in, options_.kernel[0], options_.kernel[1]}) * s);
  weight_u = register_parameter("weight_u", torch::randn({options_.out, r, 1, 1}) * s);
  if (options_.bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    bias = register_parameter("bias", torch::empty({options_.out}).uniform_(-bound, bound));
  }
}

at::Tensor FactorizedConv2dImpl::forward(const at::Tensor& x) {
  if (record_inputs) {
    // [B, I*kh*kw, L] in (i, a, b) order, the conv weight's own row layout.
    const at::Tensor patches =
        at::im2col(x, options_.kernel, options_.dilation, options_.padding, options_.stride);
    record_inputs->add(patches.transpose(1, 2).reshape({-1, patches.size(1)}));
  }
  const at::Tensor z =
      at::conv2d(x, weight_v, {}, options_.stride, options_.padding, options_.dilation);
  return at::conv2d(z, weight_u, bias);
}

void FactorizedConv2dImpl::set_from_dense(const at::Tensor& w) {
  RECAST_CHECK(w.dim() == 4 && w.size(0) == options_.out && w.size(1) == options_.in &&
                   w.size(2) == options_.kernel[0] && w.size(3) == options_.kernel[1],
               "FactorizedConv2d: dense weight expected [", options_.out, ", ", options_.in, ", ",
               options_.kernel[0], ", ", options_.kernel[1], "], found ", shape_string(w.sizes()));
  set_factors(spectral_factors(spectrum(w), options_.rank));
}

void FactorizedConv2dImpl::set_factors(const Factors& f) {
  const int64_t fan_in = options_.in * options_.kernel[0] * options_.kernel[1];
  RECAST_CHECK(f.u.dim() == 2 && f.v.dim() == 2 && f.u.size(0) == options_.out &&
                   f.v.size(0) == fan_in && f.u.size(1) == options_.rank &&
                   f.v.size(1) == options_.rank,
               "FactorizedConv2d: factors expected U [", options_.out, ", ", options_.rank,
               "] and V [", fan_in, ", ", options_.rank, "], found ", shape_string(f.u.sizes()),
               " and ", shape_string(f.v.sizes()));
  torch::NoGradGuard no_grad;
  weight_u.copy_(f.u.reshape(weight_u.sizes()));
  weight_v.copy_(f.v.t().reshape(weight_v.sizes()));
}

at::Tensor FactorizedConv2dImpl::dense_weight() const {
  const int64_t r = options_.rank;
  return at::matmul(weight_u.reshape({options_.out, r}), weight_v.reshape({r, -1}))
      .reshape({options_.out, options_.in, options_.kernel[0], options_.kernel[1]});
}

Factors FactorizedConv2dImpl::factors() const {
  const int64_t r = options_.rank;
  return {weight_u.reshape({options_.out, r}), weight_v.reshape({r, -1}).t()};
}

// ---------------------------------------------------------------- config

std::optional<FactorizedConfig> FactorizedConfig::from(const nlohmann::json& config) {
  auto it = config.find("recast_factorized");
  if (it == config.end() || it->is_null()) return std::nullopt;
  return parse(*it);
}

FactorizedConfig FactorizedConfig::parse(const nlohmann::json& block) {
  const nlohmann::json* it = &block;
  const auto bad = [&](const std::string& what) {
    return Error(msg("config key 'recast_factorized': ", what, ", found ", it->dump()));
  };
  if (!it->is_object() || !it->contains("layers") || !(*it)["layers"].is_object()) {
    throw bad("expected {\"layers\": {\"MODULE\": rank, ...}}");
  }
  FactorizedConfig c;
  for (const auto& [name, rank] : (*it)["layers"].items()) {
    if (!rank.is_number_integer() || rank.get<int64_t>() < 1) {
      throw Error(msg("config key 'recast_factorized': layer ", quote(name),
                      ": expected a rank >= 1, found ", rank.dump()));
    }
    c.layers[name] = rank.get<int64_t>();
  }
  return c;
}

nlohmann::json FactorizedConfig::to_json() const {
  nlohmann::json l = nlohmann::json::object();
  for (const auto& [name, rank] : layers) l[name] = rank;
  return {{"layers", l}};
}

std::optional<int64_t> FactorizedConfig::rank(const std::string& name) const {
  auto it = layers.find(name);
  if (it == layers.end()) return std::nullopt;
  return it->second;
}

std::vector<FactorPair> factorized_pairs(torch::nn::Module& module) {
  std::vector<FactorPair> out;
  for (const auto& item : module.named_modules("", false)) {
    Factors f;
    if (auto* l = item.value()->as<FactorizedLinear>()) {
      f = l->factors();
    } else if (auto* c = item.value()->as<FactorizedConv2d>()) {
      f = c->factors();
    } else {
      continue;
    }
    out.push_back({item.key(), f.u, f.v, {item.key() + ".weight_u", item.key() + ".weight_v"}});
  }
  return out;
}

}  // namespace recast::layers
