#include "recast/layers/refiner.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <cmath>
#include <utility>

namespace recast::layers {

namespace {

void check_maps(const at::Tensor& a, int64_t heads) {
  RECAST_CHECK(a.dim() == 4 && a.size(1) == heads && a.size(2) == a.size(3),
               "MapRefiner: expected attention maps [B, ", heads, ", N, N], found ", a.sizes());
}

// A 1x1 convolution written out: output map o = bias_o + sum_i W[o, i] x_i,
// for x [B, in, N, N] and weight [out, in, 1, 1].
at::Tensor mix_maps(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t out = weight.size(0), in = weight.size(1), n = x.size(2);
  const at::Tensor w = weight.view({out, in});
  std::vector<at::Tensor> maps;
  for (int64_t o = 0; o < out; ++o) {
    at::Tensor m = bias[o].expand({x.size(0), n, n});
    for (int64_t i = 0; i < in; ++i) m = m + w[o][i] * x.select(1, i);
    maps.push_back(m);
  }
  return at::stack(maps, 1);
}

}  // namespace

MapRefinerImpl::MapRefinerImpl(const RefinerOptions& o) : o_(o) {
  RECAST_CHECK(o.heads >= 1 && o.expansion >= 1, "MapRefiner: heads and expansion must be >= 1, found ",
               o.heads, " and ", o.expansion);
  RECAST_CHECK(o.kernel >= 1 && o.kernel % 2 == 1, "MapRefiner: the kernel must be odd, found ", o.kernel);
  const int64_t h = o.heads, e = expanded();
  namespace nn = torch::nn;
  expand = register_module("expand", nn::Conv2d(nn::Conv2dOptions(h, e, 1)));
  local = register_module(
      "local", nn::Conv2d(nn::Conv2dOptions(e, e, o.kernel).padding(o.kernel / 2).groups(e)));
  reduce = register_module("reduce", nn::Conv2d(nn::Conv2dOptions(e, h, 1)));
  if (o.batch_norm) {
    auto norm = [&](const char* name, int64_t channels) {
      return register_module(
          name, nn::BatchNorm2d(nn::BatchNormOptions(channels).eps(o.bn_eps).momentum(o.bn_momentum)));
    };
    expand_norm = norm("expand_norm", e);
    local_norm = norm("local_norm", e);
    reduce_norm = norm("reduce_norm", h);
  }
  gate = register_parameter("gate", torch::zeros({h}));
}

at::Tensor MapRefinerImpl::normalise(const at::Tensor& x, torch::nn::BatchNorm2d& norm, int64_t c0,
                                     int64_t n) {
  // Views of the buffers: batch_norm's in-place update of the running
  // statistics lands in the module's own.
  return at::batch_norm(x, norm->weight.narrow(0, c0, n), norm->bias.narrow(0, c0, n),
                        norm->running_mean.narrow(0, c0, n), norm->running_var.narrow(0, c0, n),
                        is_training(), o_.bn_momentum, o_.bn_eps, /*cudnn_enabled=*/true);
}

at::Tensor MapRefinerImpl::forward(const at::Tensor& a) {
  check_maps(a, o_.heads);
  const int64_t h = o_.heads, k = o_.kernel;
  const bool bn = o_.batch_norm;
  // Without autograd the activations and the sum can work in place.
  const bool in_place = !at::GradMode::is_enabled();
  auto act = [&](at::Tensor x) { return in_place ? x.clamp_(0, 6) : x.clamp(0, 6); };
  if (bn && is_training()) {
    for (auto* n : {&expand_norm, &local_norm, &reduce_norm}) (*n)->num_batches_tracked.add_(1);
  }
  // On CUDA the maps go channels-last: ATen's NCHW BatchNorm kernels spread
  // their work over the channels (here a handful of heads), and were two
  // thirds of the refiner's time (docs/recasts/refiner.md, Speed).
  const at::Tensor x = a.is_cuda() ? a.contiguous(at::MemoryFormat::ChannelsLast) : a;
  at::Tensor sum;  // W_r D without its bias, accumulated over the chunks
  for (int64_t c0 = 0; c0 < expanded(); c0 += h) {
    at::Tensor e = at::conv2d(x, expand->weight.narrow(0, c0, h), expand->bias.narrow(0, c0, h));
    if (bn) e = act(normalise(e, expand_norm, c0, h));
    at::Tensor d = at::conv2d(e, local->weight.narrow(0, c0, h), local->bias.narrow(0, c0, h),
                              /*stride=*/1, /*padding=*/k / 2, /*dilation=*/1, /*groups=*/h);
    e = at::Tensor();
    if (bn) d = act(normalise(d, local_norm, c0, h));
    at::Tensor part = at::conv2d(d, reduce->weight.narrow(1, c0, h));
    if (!sum.defined()) {
      sum = part;
    } else if (in_place) {
      sum.add_(part);
    } else {
      sum = sum + part;
    }
  }
  at::Tensor r = sum + reduce->bias.view({1, h, 1, 1});
  if (bn) r = normalise(r, reduce_norm, 0, h);
  at::Tensor out = a + gate.view({1, h, 1, 1}).to(r.scalar_type()) * r.contiguous();
  if (capture) {
    captured_raw = a.detach();
    captured_refined = out.detach();
  }
  return out;
}

at::Tensor MapRefinerImpl::normalise_reference(const at::Tensor& x,
                                               torch::nn::BatchNorm2d& norm) const {
  at::Tensor mean, var;
  if (is_training()) {
    mean = x.mean({0, 2, 3}, /*keepdim=*/true);
    var = (x - mean).pow(2).mean({0, 2, 3}, /*keepdim=*/true);  // biased, as BN normalises
  } else {
    mean = norm->running_mean.view({1, -1, 1, 1});
    var = norm->running_var.view({1, -1, 1, 1});
  }
  return (x - mean) / (var + o_.bn_eps).sqrt() * norm->weight.view({1, -1, 1, 1}) +
         norm->bias.view({1, -1, 1, 1});
}

at::Tensor MapRefinerImpl::forward_reference(const at::Tensor& a) {
  check_maps(a, o_.heads);
  const int64_t h = o_.heads, e = expanded(), k = o_.kernel, pad = k / 2, n = a.size(2);
  const bool bn = o_.batch_norm;
  // Expansion: map c = bias_c + sum_h W[c, h] A_h.
  at::Tensor x = mix_maps(a, expand->weight, expand->bias);
  if (bn) x = normalise_reference(x, expand_norm).clamp(0, 6);
  // Depthwise KxK: each map against its own kernel, as K^2 shifted copies of
  // the zero-padded map.
  const at::Tensor padded = at::constant_pad_nd(x, {pad, pad, pad, pad});
  const at::Tensor wl = local->weight.view({e, k, k});
  at::Tensor y = local->bias.view({1, e, 1, 1}).expand_as(x);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      y = y + wl.select(1, i).select(1, j).view({1, e, 1, 1}) * padded.narrow(2, i, n).narrow(3, j, n);
    }
  }
  if (bn) y = normalise_reference(y, local_norm).clamp(0, 6);
  // Reduction: head h = bias_h + sum_c W[h, c] D_c.
  at::Tensor r = mix_maps(y, reduce->weight, reduce->bias);
  if (bn) r = normalise_reference(r, reduce_norm);
  return a + gate.view({1, h, 1, 1}) * r;
}

RefinedAttentionImpl::RefinedAttentionImpl(AttentionSpec spec, const std::optional<RefinerOptions>& o,
                                           std::shared_ptr<MapHandoff> give_to,
                                           std::shared_ptr<MapHandoff> take_from)
    : AttentionCoreImpl(spec), give(std::move(give_to)), take(std::move(take_from)) {
  RECAST_CHECK(!spec.causal, "refined attention is bidirectional (a ViT's); this attention is causal");
  if (o) {
    RECAST_CHECK(o->heads == spec.heads, "refined attention: the refiner has ", o->heads,
                 " heads, the attention ", spec.heads);
    refiner = register_module("refiner", MapRefiner(*o));
  }
}

at::Tensor RefinedAttentionImpl::maps(const at::Tensor& q, const at::Tensor& k) const {
  const int64_t groups = spec().heads / spec().kv_heads;
  const at::Tensor keys = groups > 1 ? ops::repeat_kv(k, groups) : k;
  const at::Tensor scores = at::matmul(q, keys.transpose(-2, -1)).mul(spec().scale);
  return at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
}

at::Tensor RefinedAttentionImpl::forward(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const ops::AttentionMask& mask,
                                         KVCache* cache) {
  RECAST_CHECK(cache == nullptr, "refined attention has no KV cache (it is a ViT's)");
  RECAST_CHECK(!mask.causal && !mask.key_padding.defined(),
               "refined attention takes no mask (every patch sees every patch)");
  at::Tensor a;
  if (take) {
    a = std::exchange(take->maps, at::Tensor());  // taken, not kept
    RECAST_CHECK(a.defined(), "refined attention with shared maps: the block before handed over no maps");
    RECAST_CHECK(a.size(0) == v.size(0) && a.size(2) == v.size(2), "refined attention with shared maps: ",
                 "maps ", a.sizes(), " handed over for values ", v.sizes());
  } else {
    RECAST_CHECK(q.size(2) == k.size(2), "refined attention: ", q.size(2), " queries but ", k.size(2),
                 " keys (the maps must be square)");
    a = maps(q, k);
  }
  if (give) give->maps = a;
  if (refiner) a = refiner->forward(a);
  const int64_t groups = spec().heads / spec().kv_heads;
  const at::Tensor values = groups > 1 ? ops::repeat_kv(v, groups) : v;
  return at::matmul(a.to(values.scalar_type()), values);
}

ValueProjectionImpl::ValueProjectionImpl(int64_t in, int64_t width, int64_t lead, bool with_bias)
    : lead_(lead) {
  RECAST_CHECK(in >= 1 && width >= 1 && lead >= 0, "ValueProjection: bad sizes ", in, " -> ", lead,
               " + ", width);
  // torch.nn.Linear's default init (kaiming_uniform with a = sqrt(5)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", torch::empty({width, in}).uniform_(-bound, bound));
  if (with_bias) bias = register_parameter("bias", torch::empty({width}).uniform_(-bound, bound));
}

at::Tensor ValueProjectionImpl::forward(const at::Tensor& x) {
  const at::Tensor v = at::linear(x, weight, bias);
  if (lead_ == 0) return v;
  std::vector<int64_t> shape = v.sizes().vec();
  shape.back() = lead_;
  return at::cat({at::zeros(shape, v.options()), v}, -1);
}

namespace {

// Rows of `w` [..., N] as distributions: max(w, 0) / its sum (a row with no
// positive weight counts as uniform).
at::Tensor as_distribution(const at::Tensor& w) {
  const at::Tensor p = w.clamp_min(0);
  const at::Tensor sum = p.sum(-1, /*keepdim=*/true);
  const at::Tensor uniform = at::full_like(p, 1.0 / static_cast<double>(w.size(-1)));
  return at::where(sum > 0, p / sum.clamp_min(1e-30), uniform);
}

at::Tensor entropy(const at::Tensor& p) {  // [..., N] -> [...]
  return -(p * p.clamp_min(1e-30).log()).sum(-1);
}

}  // namespace

MapSummary summarise_maps(const at::Tensor& raw_in, const at::Tensor& refined_in) {
  RECAST_CHECK(raw_in.dim() == 4 && raw_in.sizes() == refined_in.sizes() && raw_in.size(2) == raw_in.size(3),
               "summarise_maps: expected two maps [B, H, N, N] of one shape, found ", raw_in.sizes(),
               " and ", refined_in.sizes());
  const at::Tensor raw = raw_in.to(at::kDouble), refined = refined_in.to(at::kDouble);
  const int64_t n = raw.size(2);
  const auto g = static_cast<int64_t>(std::floor(std::sqrt(static_cast<double>(n))));
  const int64_t lead = n - g * g;  // CLS (and any other non-patch tokens) first
  MapSummary s;
  s.change = ((refined - raw).norm() / raw.norm().clamp_min(1e-30)).item<double>();
  const at::Tensor p_raw = as_distribution(raw.narrow(2, lead, g * g));
  const at::Tensor p_ref = as_distribution(refined.narrow(2, lead, g * g));
  const std::vector<int64_t> batch_and_queries = {0, 2};
  const at::Tensor e_raw = entropy(p_raw).mean(batch_and_queries);
  const at::Tensor e_ref = entropy(p_ref).mean(batch_and_queries);
  s.entropy_raw = e_raw.mean().item<double>();
  s.entropy_refined = e_ref.mean().item<double>();
  auto to_vector = [](const at::Tensor& t) {
    const at::Tensor c = t.contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  s.entropy_raw_heads = to_vector(e_raw);
  s.entropy_refined_heads = to_vector(e_ref);
  // |pos_j - pos_i| between patches (row-major on the g x g grid).
  const at::Tensor idx = at::arange(g * g, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor row = (idx / static_cast<double>(g)).floor(), col = idx - row * static_cast<double>(g);
  const at::Tensor dist =
      ((row.view({-1, 1}) - row.view({1, -1})).pow(2) + (col.view({-1, 1}) - col.view({1, -1})).pow(2)).sqrt();
  auto distance = [&](const at::Tensor& maps) {
    const at::Tensor p = as_distribution(maps.narrow(2, lead, g * g).narrow(3, lead, g * g));
    return (p * dist).sum(-1).mean().item<double>();
  };
  s.distance_raw = distance(raw);
  s.distance_refined = distance(refined);
  return s;
}

nlohmann::json refiner_stats(torch::nn::Module& model, const std::function<void()>& run_forward) {
  std::vector<std::pair<std::string, MapRefinerImpl*>> found;
  for (const auto& item : model.named_modules("", false)) {
    auto* ra = item.value()->as<MapRefiner>();
    if (!ra) continue;
    const std::string& name = item.key();
    const size_t dot = name.rfind('.');
    found.emplace_back(dot == std::string::npos ? name : name.substr(0, dot), ra);
  }
  if (found.empty()) return nullptr;
  torch::NoGradGuard no_grad;
  for (auto& l : found) l.second->capture = true;
  run_forward();
  nlohmann::json out = nlohmann::json::object();
  for (auto& [name, ra] : found) {
    ra->capture = false;
    const at::Tensor g = ra->gate.detach().to(at::kCPU, at::kDouble).contiguous();
    nlohmann::json j = {{"gate", std::vector<double>(g.data_ptr<double>(), g.data_ptr<double>() + g.numel())}};
    if (ra->captured_raw.defined()) {
      const MapSummary s = summarise_maps(ra->captured_raw.cpu(), ra->captured_refined.cpu());
      j.update({{"entropy_raw", s.entropy_raw},
                {"entropy_refined", s.entropy_refined},
                {"distance_raw", s.distance_raw},
                {"distance_refined", s.distance_refined},
                {"change", s.change}});
    }
    ra->captured_raw = ra->captured_refined = at::Tensor();
    out[name] = j;
  }
  return out;
}

std::string RefinedAttentionImpl::describe() const {
  const std::string source = take ? "the previous block's softmax maps" : "softmax attention";
  const std::string handed = give ? ", its maps shared with the next block" : "";
  if (!refiner) return source + handed;
  const auto& o = refiner->options();
  return msg(source, " with refined maps (expansion ", o.expansion, ", kernel ", o.kernel,
             o.batch_norm ? ", BN + ReLU6" : ", no norm", ")", handed);
}

RefinerConfig RefinerConfig::parse(const nlohmann::json& block) {
  const std::string where = "config 'recast_refiner'";
  RECAST_CHECK(block.is_object(), where, ": expected an object, found ", block.type_name());
  RefinerConfig c;
  for (const auto& [key, value] : block.items()) {
    if (key == "layers") {
      RECAST_CHECK(value.is_array(), where, ": 'layers' must be a list of block indices");
      for (const auto& l : value) {
        RECAST_CHECK(l.is_number_integer() && l.get<int64_t>() >= 0, where,
                     ": 'layers' must hold block indices >= 0, found ", l.dump());
        c.layers.insert(l.get<int64_t>());
      }
    } else if (key == "expansion" || key == "kernel") {
      RECAST_CHECK(value.is_number_integer(), where, ": '", key, "' must be an integer, found ", value.dump());
      const int64_t v = value.get<int64_t>();
      if (key == "expansion") {
        RECAST_CHECK(v >= 1 && v <= 64, where, ": 'expansion' must be in [1, 64], found ", v);
        c.expansion = v;
      } else {
        RECAST_CHECK(v >= 1 && v <= 31 && v % 2 == 1, where, ": 'kernel' must be odd, in [1, 31], found ", v);
        c.kernel = v;
      }
    } else if (key == "norm") {
      RECAST_CHECK(value.is_string() && (value == "bn" || value == "none"), where,
                   ": 'norm' must be \"bn\" or \"none\", found ", value.dump());
      c.batch_norm = value == "bn";
    } else if (key == "shared") {
      RECAST_CHECK(value.is_boolean(), where, ": 'shared' must be true or false, found ", value.dump());
      c.shared = value.get<bool>();
    } else {
      throw Error(msg(where, ": unknown key '", key, "' (expected layers, expansion, kernel, norm, shared)"));
    }
  }
  RECAST_CHECK(!c.layers.empty(), where, ": 'layers' is missing or empty");
  if (c.shared) {
    bool odd = false;
    for (int64_t l : c.layers) odd = odd || l % 2 == 1;
    RECAST_CHECK(odd, where, ": 'shared' needs an odd block in 'layers' (odd blocks take the maps of "
                             "the block before), found only even ones");
  }
  return c;
}

nlohmann::json RefinerConfig::to_json() const {
  nlohmann::json j = {{"layers", std::vector<int64_t>(layers.begin(), layers.end())},
                      {"expansion", expansion},
                      {"kernel", kernel},
                      {"norm", batch_norm ? "bn" : "none"}};
  if (shared) j["shared"] = true;
  return j;
}

RefinerOptions RefinerConfig::options(int64_t heads) const {
  RefinerOptions o;
  o.heads = heads;
  o.expansion = expansion;
  o.kernel = kernel;
  o.batch_norm = batch_norm;
  return o;
}

}  // namespace recast::layers
