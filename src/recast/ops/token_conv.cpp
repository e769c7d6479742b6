#include "recast/ops/token_conv.h"

#include "recast/core/error.h"
#include "recast/core/log.h"

#include <torch/torch.h>

#ifdef RECAST_WITH_CUDA
#include "recast/ops/cuda/token_conv.h"
#endif

namespace recast::ops {
namespace {

struct Geometry {
  int64_t batch, length, channels, groups, kernel, out, offset;  // input row = t + offset + j * d
  bool dynamic;
};

Geometry check(const at::Tensor& x, const at::Tensor& w, const TokenConvOptions& o) {
  RECAST_CHECK(x.dim() == 3, "token conv: x: expected [B, T, C], found ", x.sizes());
  RECAST_CHECK(w.dim() == 2 || w.dim() == 4,
               "token conv: weight: expected [G, K] or [B, T, G, K], found ", w.sizes());
  RECAST_CHECK(o.dilation >= 1, "token conv: dilation must be >= 1, found ", o.dilation);
  Geometry g{};
  g.batch = x.size(0), g.length = x.size(1), g.channels = x.size(2);
  g.dynamic = w.dim() == 4;
  g.groups = w.size(-2), g.kernel = w.size(-1);
  RECAST_CHECK(g.kernel >= 1, "token conv: kernel width must be >= 1, found ", g.kernel);
  RECAST_CHECK(g.groups >= 1 && g.channels % g.groups == 0, "token conv: ", g.channels,
               " channels do not split into ", g.groups, " kernel groups");
  RECAST_CHECK(o.history >= 0 && o.history <= g.length, "token conv: history ", o.history,
               " outside [0, ", g.length, "]");
  g.out = g.length - o.history;
  if (g.dynamic) {
    RECAST_CHECK(w.size(0) == g.batch && w.size(1) == g.out, "token conv: dynamic weight: expected [",
                 g.batch, ", ", g.out, ", G, K], found ", w.sizes());
  }
  g.offset = o.history - token_conv_left(g.kernel, o.dilation, o.causal);
  return g;
}

// The kernel of every channel at tap j: [C] (shared) or [B, Tout, C] (dynamic).
at::Tensor tap(const at::Tensor& w, const Geometry& g, int64_t j) {
  const at::Tensor wj = w.select(-1, j);
  return wj.repeat_interleave(g.channels / g.groups, -1);
}

at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const TokenConvOptions& o,
                     const Geometry& g) {
  at::Tensor y = at::zeros({g.batch, g.out, g.channels}, x.options());
  for (int64_t j = 0; j < g.kernel; ++j) {
    // Output rows t whose input row t + offset + j d lies inside [0, T).
    const int64_t shift = g.offset + j * o.dilation;
    const int64_t lo = std::max<int64_t>(0, -shift), hi = std::min<int64_t>(g.out, g.length - shift);
    if (hi <= lo) continue;
    const at::Tensor xs = x.narrow(1, lo + shift, hi - lo);
    at::Tensor wj = tap(w, g, j);
    wj = g.dynamic ? wj.narrow(1, lo, hi - lo) : wj.view({1, 1, g.channels});
    y = y + at::constant_pad_nd(xs * wj, {0, 0, lo, g.out - hi});
  }
  return y;
}

// x [B, T, C] zero-padded so that output row t's window starts at row t:
// [B, Tout + d (K - 1), C].
at::Tensor padded_window_input(const at::Tensor& x, const TokenConvOptions& o, const Geometry& g) {
  const int64_t span = o.dilation * (g.kernel - 1) + 1;
  const int64_t need = g.out + span - 1;  // rows offset .. offset + need - 1
  const int64_t left = std::max<int64_t>(0, -g.offset);
  const int64_t first = std::max<int64_t>(0, g.offset);
  const int64_t take = std::max<int64_t>(0, std::min(g.length - first, need - left));
  const int64_t right = need - left - take;
  return at::constant_pad_nd(x.narrow(1, first, take), {0, 0, left, right});
}

at::Tensor libtorch(const at::Tensor& x, at::Tensor w, const TokenConvOptions& o, const Geometry& g) {
  const at::Tensor xp = padded_window_input(x, o, g);
  if (!g.dynamic) {
    // Grouped conv1d with one group per channel, each channel's kernel its block's.
    w = w.repeat_interleave(g.channels / g.groups, 0).unsqueeze(1);  // [C, 1, K]
    const std::vector<int64_t> stride{1}, padding{0}, dilation{o.dilation};
    return at::conv1d(xp.transpose(1, 2), w, at::Tensor(), stride, padding, dilation, g.channels)
        .transpose(1, 2);
  }
  // The windows as a strided view [B, Tout, C, K], then one batched product
  // per (row, group): [C/G, K] x [K, 1].
  const int64_t span = o.dilation * (g.kernel - 1) + 1;
  at::Tensor windows = xp.unfold(1, span, 1);  // [B, Tout, C, span]
  if (o.dilation > 1) windows = windows.slice(3, 0, span, o.dilation);
  windows = windows.reshape({g.batch, g.out, g.groups, g.channels / g.groups, g.kernel});
  return at::matmul(windows, w.unsqueeze(-1)).reshape({g.batch, g.out, g.channels});
}

#ifdef RECAST_WITH_CUDA
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The CUDA kernels under autograd: forward, and both gradients in backward.
struct CudaTokenConv : torch::autograd::Function<CudaTokenConv> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            int64_t offset, int64_t dilation, int64_t out) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["dilation"] = dilation;
    return cuda::token_conv_forward(x, w, offset, dilation, out);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const int64_t offset = ctx->saved_data["offset"].toInt();
    const int64_t dilation = ctx->saved_data["dilation"].toInt();
    const at::Tensor gy = grads[0].contiguous();
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) gx = cuda::token_conv_grad_input(gy, w, offset, dilation, x.size(1));
    if (ctx->needs_input_grad(1)) gw = cuda::token_conv_grad_weight(gy, x, w, offset, dilation).to(w.scalar_type());
    return {gx, gw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};
#endif

// Why the CUDA path cannot take these inputs ("" when it can).
std::string cuda_refusal(const at::Tensor& x, const at::Tensor& w) {
#ifdef RECAST_WITH_CUDA
  if (!x.is_cuda() || !w.is_cuda()) return "the tensors are not on a CUDA device";
  if (x.get_device() != w.get_device()) return "x and the kernel are on different devices";
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kDouble && t != at::kHalf && t != at::kBFloat16) {
    return msg("dtype ", t, " has no kernel");
  }
  return "";
#else
  (void)x, (void)w;
  return "recast was built without CUDA kernels";
#endif
}

}  // namespace

int64_t token_conv_left(int64_t kernel, int64_t dilation, bool causal) {
  return dilation * (causal ? kernel - 1 : (kernel - 1) / 2);
}

bool token_conv_has_cuda() {
#ifdef RECAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string token_conv_path(const at::Tensor& x, const at::Tensor& weight,
                            const TokenConvOptions& o, std::string* why) {
  if (o.path == ConvPath::Reference) return "reference";
  if (o.path == ConvPath::LibTorch) return "libtorch";
  const std::string refusal = cuda_refusal(x, weight);
  if (refusal.empty()) return "cuda";
  if (why) *why = refusal;
  return "libtorch";
}

at::Tensor token_conv(const at::Tensor& x, const at::Tensor& weight, const TokenConvOptions& o) {
  const Geometry g = check(x, weight, o);
  const at::Tensor w = weight.to(x.scalar_type());
  if (g.out == 0) return at::zeros({g.batch, 0, g.channels}, x.options());
  std::string why;
  const std::string path = token_conv_path(x, w, o, &why);
  if (path == "reference") return reference(x, w, o, g);
  if (path == "cuda") {
#ifdef RECAST_WITH_CUDA
    return CudaTokenConv::apply(x.contiguous(), w.contiguous(), g.offset, o.dilation, g.out);
#endif
  }
  if (o.path == ConvPath::Cuda) log::debug("token conv: CUDA path not taken (", why, "): LibTorch path");
  return libtorch(x, w, o, g);
}

}  // namespace recast::ops
