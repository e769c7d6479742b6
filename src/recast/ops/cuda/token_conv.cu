#include "recast/ops/cuda/token_conv.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>

namespace recast::ops::cuda {
namespace {

constexpr int kChannels = 64;  // threads along C: coalesced rows
constexpr int kRowGroups = 4;  // threads along T, each taking every 4th row of the tile
constexpr int kRows = 128;     // output rows per block

// y[b, t, c] = sum_j w(b, t, g(c), j) * x[b, t + offset + j d, c] for one tile
// of 64 channels x 128 rows. kStaged: the tile's window rows (128 + span - 1)
// are first copied to shared memory (converted to Acc), so each input element
// is read from global memory once per tile instead of K times.
template <typename T, typename Acc, bool kDynamic, bool kStaged>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                               int tin, int tout, int channels, int groups, int kernel, int offset,
                               int dilation) {
  extern __shared__ unsigned char shared_raw[];
  Acc* xs = reinterpret_cast<Acc*>(shared_raw);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kChannels + tx;
  const int t0 = blockIdx.y * kRows;
  const int64_t b = blockIdx.z;
  const int span = dilation * (kernel - 1) + 1;
  const T* xb = x + b * tin * channels;
  if (kStaged) {
    const int rows = kRows + span - 1;
    for (int r = ty; r < rows; r += kRowGroups) {
      const int p = t0 + offset + r;
      xs[r * kChannels + tx] = (c < channels && p >= 0 && p < tin)
                                   ? static_cast<Acc>(xb[static_cast<int64_t>(p) * channels + c])
                                   : Acc(0);
    }
    __syncthreads();
  }
  if (c >= channels) return;
  const int g = c / (channels / groups);
  for (int r = ty; r < kRows; r += kRowGroups) {
    const int t = t0 + r;
    if (t >= tout) break;
    const T* wr = kDynamic ? w + ((b * tout + t) * groups + g) * kernel : w + static_cast<int64_t>(g) * kernel;
    Acc acc = 0;
    for (int j = 0; j < kernel; ++j) {
      Acc xv;
      if (kStaged) {
        xv = xs[(r + j * dilation) * kChannels + tx];
      } else {
        const int p = t + offset + j * dilation;
        xv = (p >= 0 && p < tin) ? static_cast<Acc>(xb[static_cast<int64_t>(p) * channels + c]) : Acc(0);
      }
      acc += static_cast<Acc>(wr[j]) * xv;
    }
    y[(b * tout + t) * channels + c] = static_cast<T>(acc);
  }
}

// The same tile with register blocking (C a multiple of 4): each of the 256
// threads owns 4 adjacent channels x 8 consecutive rows (32 accumulators),
// reads its window rows from shared memory as float4 and each tap's kernel
// value once per row (dynamic) or once per channel (shared), so a tap costs
// about one instruction per output instead of three; the staging loads are
// spread over the block, 4 channels per thread. Used where the staged tile
// fits shared memory and Acc is float.
constexpr int kQuads = kChannels / 4;          // threads along C
constexpr int kRowThreads = 256 / kQuads;      // threads along T
constexpr int kRowsPerThread = kRows / kRowThreads;

template <typename T, bool kDynamic, bool kSameHead>
__global__ void forward_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                     int tin, int tout, int channels, int groups, int kernel, int offset,
                                     int dilation) {
  extern __shared__ unsigned char shared_raw[];
  float4* xs = reinterpret_cast<float4*>(shared_raw);  // [rows][kQuads]
  const int tid = threadIdx.x;
  const int q = tid % kQuads, ty = tid / kQuads;
  const int c0 = blockIdx.x * kChannels + 4 * q;
  const int t0 = blockIdx.y * kRows;
  const int64_t b = blockIdx.z;
  const int span = dilation * (kernel - 1) + 1;
  const int rows = kRows + span - 1;
  const T* xb = x + b * tin * channels;
  for (int i = tid; i < rows * kQuads; i += 256) {
    const int r = i / kQuads, qq = i % kQuads, c = blockIdx.x * kChannels + 4 * qq;
    const int p = t0 + offset + r;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (c < channels && p >= 0 && p < tin) {
      const T* src = xb + static_cast<int64_t>(p) * channels + c;
      v = make_float4(static_cast<float>(src[0]), static_cast<float>(src[1]), static_cast<float>(src[2]),
                      static_cast<float>(src[3]));
    }
    xs[i] = v;
  }
  __syncthreads();
  if (c0 >= channels) return;
  const int gsize = channels / groups;
  int g[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) g[k] = (c0 + k) / gsize;
  const int r0 = ty * kRowsPerThread;
  float acc[kRowsPerThread][4];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[i][k] = 0.f;
  }
  for (int j = 0; j < kernel; ++j) {
    float ws[4];
    if (!kDynamic) {
      if (kSameHead) {
        ws[0] = ws[1] = ws[2] = ws[3] = static_cast<float>(w[static_cast<int64_t>(g[0]) * kernel + j]);
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k) ws[k] = static_cast<float>(w[static_cast<int64_t>(g[k]) * kernel + j]);
      }
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const float4 v = xs[(r0 + i + j * dilation) * kQuads + q];
      if (kDynamic) {
        const int t = min(t0 + r0 + i, tout - 1);  // rows past the end are computed, not stored
        const T* wr = w + (b * tout + t) * groups * kernel + j;
        if (kSameHead) {
          ws[0] = ws[1] = ws[2] = ws[3] = static_cast<float>(wr[static_cast<int64_t>(g[0]) * kernel]);
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k) ws[k] = static_cast<float>(wr[static_cast<int64_t>(g[k]) * kernel]);
        }
      }
      acc[i][0] += ws[0] * v.x;
      acc[i][1] += ws[1] * v.y;
      acc[i][2] += ws[2] * v.z;
      acc[i][3] += ws[3] * v.w;
    }
  }
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int t = t0 + r0 + i;
    if (t >= tout) break;
    T* dst = y + (b * tout + t) * channels + c0;
#pragma unroll
    for (int k = 0; k < 4; ++k) dst[k] = static_cast<T>(acc[i][k]);
  }
}

// d x[b, p, c] = sum_j w[b, t, g(c), j] * gy[b, t, c] with t = p - offset - j d
// (dynamic kernels; shared ones reuse forward_kernel with the taps flipped).
template <typename T, typename Acc, bool kStaged>
__global__ void grad_input_dynamic_kernel(const T* __restrict__ gy, const T* __restrict__ w,
                                          T* __restrict__ gx, int tin, int tout, int channels,
                                          int groups, int kernel, int offset, int dilation) {
  extern __shared__ unsigned char shared_raw[];
  Acc* gs = reinterpret_cast<Acc*>(shared_raw);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kChannels + tx;
  const int p0 = blockIdx.y * kRows;
  const int64_t b = blockIdx.z;
  const int span = dilation * (kernel - 1) + 1;
  const int first = p0 - offset - (span - 1);  // the first gy row the tile reads
  const T* gb = gy + b * tout * channels;
  if (kStaged) {
    const int rows = kRows + span - 1;
    for (int r = ty; r < rows; r += kRowGroups) {
      const int t = first + r;
      gs[r * kChannels + tx] = (c < channels && t >= 0 && t < tout)
                                   ? static_cast<Acc>(gb[static_cast<int64_t>(t) * channels + c])
                                   : Acc(0);
    }
    __syncthreads();
  }
  if (c >= channels) return;
  const int g = c / (channels / groups);
  for (int r = ty; r < kRows; r += kRowGroups) {
    const int p = p0 + r;
    if (p >= tin) break;
    Acc acc = 0;
    for (int j = 0; j < kernel; ++j) {
      const int t = p - offset - j * dilation;
      if (t < 0 || t >= tout) continue;
      const Acc g_t = kStaged ? gs[(t - first) * kChannels + tx]
                              : static_cast<Acc>(gb[static_cast<int64_t>(t) * channels + c]);
      acc += static_cast<Acc>(w[((b * tout + t) * groups + g) * kernel + j]) * g_t;
    }
    gx[(b * tin + p) * channels + c] = static_cast<T>(acc);
  }
}

// Shared kernels: d w_c[c, j] = sum_{b, t} gy[b, t, c] * x[b, t + offset + j d, c],
// per channel (summed over each group's channels afterwards). Each block
// reduces its tile over its rows and adds one value per (channel, tap).
template <typename T, typename Acc, bool kStaged>
__global__ void grad_weight_shared_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                          Acc* __restrict__ gw, int tin, int tout, int channels,
                                          int kernel, int offset, int dilation) {
  extern __shared__ unsigned char shared_raw[];
  Acc* red = reinterpret_cast<Acc*>(shared_raw);     // [kRowGroups][kChannels]
  Acc* gs = red + kRowGroups * kChannels;            // [kRows][kChannels]
  Acc* xs = gs + kRows * kChannels;                  // [kRows + span - 1][kChannels]
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kChannels + tx;
  const int t0 = blockIdx.y * kRows;
  const int64_t b = blockIdx.z;
  const int span = dilation * (kernel - 1) + 1;
  const bool on = c < channels;
  const T* xb = x + b * tin * channels;
  const T* gb = gy + b * tout * channels;
  if (kStaged) {
    for (int r = ty; r < kRows + span - 1; r += kRowGroups) {
      const int p = t0 + offset + r;
      xs[r * kChannels + tx] =
          (on && p >= 0 && p < tin) ? static_cast<Acc>(xb[static_cast<int64_t>(p) * channels + c]) : Acc(0);
    }
    for (int r = ty; r < kRows; r += kRowGroups) {
      const int t = t0 + r;
      gs[r * kChannels + tx] =
          (on && t < tout) ? static_cast<Acc>(gb[static_cast<int64_t>(t) * channels + c]) : Acc(0);
    }
    __syncthreads();
  }
  if (kStaged) {
    // Thread (tx, ty) takes taps ty, ty + 4, ... of its channel over all the
    // tile's rows (rows past the end were staged as zeros): no reduction
    // between threads, one atomic add per (channel, tap) per tile.
    if (on) {
      for (int j = ty; j < kernel; j += kRowGroups) {
        Acc part = 0;
        const Acc* xj = xs + j * dilation * kChannels + tx;
        const Acc* gj = gs + tx;
#pragma unroll 8
        for (int r = 0; r < kRows; ++r) part += gj[r * kChannels] * xj[r * kChannels];
        atomicAdd(gw + static_cast<int64_t>(c) * kernel + j, part);
      }
    }
    return;
  }
  for (int j = 0; j < kernel; ++j) {
    Acc part = 0;
    if (on) {
      for (int r = ty; r < kRows; r += kRowGroups) {
        const int t = t0 + r;
        if (t >= tout) break;
        const int p = t + offset + j * dilation;
        if (p >= 0 && p < tin) {
          part += static_cast<Acc>(gb[static_cast<int64_t>(t) * channels + c]) *
                  static_cast<Acc>(xb[static_cast<int64_t>(p) * channels + c]);
        }
      }
    }
    red[ty * kChannels + tx] = part;
    __syncthreads();
    if (ty == 0 && on) {
      Acc sum = 0;
      for (int i = 0; i < kRowGroups; ++i) sum += red[i * kChannels + tx];
      atomicAdd(gw + static_cast<int64_t>(c) * kernel + j, sum);
    }
    __syncthreads();
  }
}

// Dynamic kernels: d w[b, t, g, j] = sum_{c in g} gy[b, t, c] * x[b, t + offset + j d, c].
// One block per (b, t); one warp per (g, j), its lanes along the group's
// channels (coalesced), reduced by shuffles.
template <typename T, typename Acc>
__global__ void grad_weight_dynamic_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                           Acc* __restrict__ gw, int tin, int tout, int channels,
                                           int groups, int kernel, int offset, int dilation) {
  const int64_t row = blockIdx.x;  // b * tout + t
  const int64_t b = row / tout;
  const int t = static_cast<int>(row % tout);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int gsize = channels / groups;
  const T* grow = gy + row * channels;
  for (int pair = warp; pair < groups * kernel; pair += warps) {
    const int g = pair / kernel, j = pair % kernel;
    const int p = t + offset + j * dilation;
    Acc acc = 0;
    if (p >= 0 && p < tin) {
      const T* xrow = x + (b * tin + p) * channels + static_cast<int64_t>(g) * gsize;
      const T* gr = grow + static_cast<int64_t>(g) * gsize;
      for (int i = lane; i < gsize; i += 32) acc += static_cast<Acc>(gr[i]) * static_cast<Acc>(xrow[i]);
    }
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, s);
    if (lane == 0) gw[(row * groups + g) * kernel + j] = acc;
  }
}

// Whether `bytes` of dynamic shared memory fit a block on this device, opting
// the kernel in beyond the default 48 KiB.
template <typename Kernel>
bool fits_shared(Kernel kernel, size_t bytes) {
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  if (bytes > limit) return false;
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
  return true;
}

int narrow_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= INT32_MIN && v <= INT32_MAX, "token conv: ", what, " ", v, " exceeds 32 bits");
  return static_cast<int>(v);
}

struct Shape {
  int64_t batch;
  int tin, tout, channels, groups, kernel, offset, dilation, span;
};

Shape shape_of(const at::Tensor& x, const at::Tensor& w, int64_t tin, int64_t tout, int64_t offset,
               int64_t dilation) {
  Shape s{};
  s.batch = x.size(0);
  s.tin = narrow_int(tin, "length"), s.tout = narrow_int(tout, "length");
  s.channels = narrow_int(x.size(2), "channels");
  s.groups = narrow_int(w.size(-2), "groups"), s.kernel = narrow_int(w.size(-1), "kernel");
  s.offset = narrow_int(offset, "offset"), s.dilation = narrow_int(dilation, "dilation");
  s.span = narrow_int(dilation * (w.size(-1) - 1) + 1, "span");
  return s;
}

dim3 tiles(const Shape& s, int rows) {
  return dim3(static_cast<unsigned>((s.channels + kChannels - 1) / kChannels),
              static_cast<unsigned>((rows + kRows - 1) / kRows), static_cast<unsigned>(s.batch));
}

// forward_kernel over `in` [B, Tin, C] into [B, Tout, C].
at::Tensor launch_forward(const at::Tensor& in, const at::Tensor& w, const Shape& s) {
  at::Tensor out = at::empty({s.batch, s.tout, s.channels}, in.options());
  if (out.numel() == 0) return out;
  const bool dynamic = w.dim() == 4;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "token_conv_forward", [&] {
    using Acc = at::acc_type<scalar_t, true>;
    const size_t bytes = sizeof(Acc) * kChannels * static_cast<size_t>(kRows + s.span - 1);
    auto run = [&](auto kernel, size_t shared) {
      kernel<<<tiles(s, s.tout), dim3(kChannels, kRowGroups), shared, stream>>>(
          in.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), s.tin, s.tout,
          s.channels, s.groups, s.kernel, s.offset, s.dilation);
    };
    // The register-tiled form where it applies (fp32 accumulation, C % 4 == 0).
    const bool same_head = (s.channels / s.groups) % 4 == 0;
    if (std::is_same<Acc, float>::value && s.channels % 4 == 0) {
      auto tiled = dynamic ? (same_head ? forward_tiled_kernel<scalar_t, true, true> : forward_tiled_kernel<scalar_t, true, false>)
                           : (same_head ? forward_tiled_kernel<scalar_t, false, true> : forward_tiled_kernel<scalar_t, false, false>);
      if (fits_shared(tiled, bytes)) {
        tiled<<<tiles(s, s.tout), 256, bytes, stream>>>(in.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                       out.data_ptr<scalar_t>(), s.tin, s.tout, s.channels,
                                                       s.groups, s.kernel, s.offset, s.dilation);
        return;
      }
    }
    if (dynamic) {
      auto staged = forward_kernel<scalar_t, Acc, true, true>;
      if (fits_shared(staged, bytes)) run(staged, bytes); else run(forward_kernel<scalar_t, Acc, true, false>, 0);
    } else {
      auto staged = forward_kernel<scalar_t, Acc, false, true>;
      if (fits_shared(staged, bytes)) run(staged, bytes); else run(forward_kernel<scalar_t, Acc, false, false>, 0);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void check_inputs(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_cuda() && w.is_cuda() && x.device() == w.device(), "token conv: tensors on one GPU");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && w.is_contiguous() && w.scalar_type() == x.scalar_type(),
              "token conv: contiguous x [B, T, C] and a kernel of its dtype");
}

}  // namespace

at::Tensor token_conv_forward(const at::Tensor& x, const at::Tensor& w, int64_t offset,
                              int64_t dilation, int64_t out) {
  check_inputs(x, w);
  const c10::cuda::CUDAGuard guard(x.device());
  return launch_forward(x, w, shape_of(x, w, x.size(1), out, offset, dilation));
}

at::Tensor token_conv_grad_input(const at::Tensor& gy, const at::Tensor& w, int64_t offset,
                                 int64_t dilation, int64_t in) {
  check_inputs(gy, w);
  const c10::cuda::CUDAGuard guard(gy.device());
  const int64_t kernel = w.size(-1);
  if (w.dim() == 2) {
    // The transposed convolution of shared taps is the same correlation over
    // gy with the taps reversed: x row p collects gy rows p - offset - j d.
    const at::Tensor flipped = w.flip(-1).contiguous();
    return launch_forward(gy, flipped,
                          shape_of(gy, flipped, gy.size(1), in, -offset - dilation * (kernel - 1), dilation));
  }
  Shape s = shape_of(gy, w, in, gy.size(1), offset, dilation);
  at::Tensor gx = at::empty({s.batch, s.tin, s.channels}, gy.options());
  if (gx.numel() == 0) return gx;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "token_conv_grad_input", [&] {
    using Acc = at::acc_type<scalar_t, true>;
    const size_t bytes = sizeof(Acc) * kChannels * static_cast<size_t>(kRows + s.span - 1);
    auto run = [&](auto kernel, size_t shared) {
      kernel<<<tiles(s, s.tin), dim3(kChannels, kRowGroups), shared, stream>>>(
          gy.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), s.tin, s.tout,
          s.channels, s.groups, s.kernel, s.offset, s.dilation);
    };
    auto staged = grad_input_dynamic_kernel<scalar_t, Acc, true>;
    if (fits_shared(staged, bytes)) run(staged, bytes); else run(grad_input_dynamic_kernel<scalar_t, Acc, false>, 0);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gx;
}

at::Tensor token_conv_grad_weight(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                                  int64_t offset, int64_t dilation) {
  check_inputs(x, w);
  check_inputs(gy, w);
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape s = shape_of(x, w, x.size(1), gy.size(1), offset, dilation);
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto stream = at::cuda::getCurrentCUDAStream();
  if (w.dim() == 4) {
    at::Tensor gw = at::empty(w.sizes(), x.options().dtype(acc_dtype));
    if (gw.numel() == 0) return gw;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "token_conv_grad_weight", [&] {
      using Acc = at::acc_type<scalar_t, true>;
      grad_weight_dynamic_kernel<scalar_t, Acc><<<static_cast<unsigned>(s.batch * s.tout), 256, 0, stream>>>(
          gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), gw.data_ptr<Acc>(), s.tin, s.tout,
          s.channels, s.groups, s.kernel, s.offset, s.dilation);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return gw;
  }
  at::Tensor per_channel = at::zeros({s.channels, s.kernel}, x.options().dtype(acc_dtype));
  if (s.tout > 0 && s.batch > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "token_conv_grad_weight", [&] {
      using Acc = at::acc_type<scalar_t, true>;
      const size_t bytes =
          sizeof(Acc) * kChannels * static_cast<size_t>(kRowGroups + kRows + kRows + s.span - 1);
      auto run = [&](auto kernel, size_t shared) {
        kernel<<<tiles(s, s.tout), dim3(kChannels, kRowGroups), shared, stream>>>(
            gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), per_channel.data_ptr<Acc>(), s.tin,
            s.tout, s.channels, s.kernel, s.offset, s.dilation);
      };
      auto staged = grad_weight_shared_kernel<scalar_t, Acc, true>;
      if (fits_shared(staged, bytes)) {
        run(staged, bytes);
      } else {
        run(grad_weight_shared_kernel<scalar_t, Acc, false>, sizeof(Acc) * kChannels * kRowGroups);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return per_channel.view({s.groups, s.channels / s.groups, s.kernel}).sum(1);
}

}  // namespace recast::ops::cuda
