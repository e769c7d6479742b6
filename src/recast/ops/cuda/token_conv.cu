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
// Dilation 1: taps are taken kTaps at a time from a register window of
// kRowsPerThread + kTaps - 1 rows, so each staged row is read from shared
// memory about twice per chunk instead of once per tap (at K = 31 the
// per-tap form was shared-memory bound at 17% of HBM bandwidth).
constexpr int kTaps = 8;

// Four adjacent channels as one vector access (8 bytes in bf16 / fp16, 16 in
// fp32); callers check the alignment.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
__device__ __forceinline__ float4 load_quad(const T* p) {
  const Quad<T> q = *reinterpret_cast<const Quad<T>*>(p);
  return make_float4(static_cast<float>(q.v[0]), static_cast<float>(q.v[1]), static_cast<float>(q.v[2]),
                     static_cast<float>(q.v[3]));
}

template <typename T>
__device__ __forceinline__ void store_quad(T* p, const float (&a)[4]) {
  Quad<T> q;
#pragma unroll
  for (int k = 0; k < 4; ++k) q.v[k] = static_cast<T>(a[k]);
  *reinterpret_cast<Quad<T>*>(p) = q;
}

// The four channels' taps j from `wr` (w for shared kernels, the row's
// [G, K] block for dynamic ones).
template <typename T, bool kSameHead>
__device__ __forceinline__ void tap_weights(const T* wr, const int (&g)[4], int kernel, int j, float (&ws)[4]) {
  if (kSameHead) {
    ws[0] = ws[1] = ws[2] = ws[3] = static_cast<float>(wr[static_cast<int64_t>(g[0]) * kernel + j]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) ws[k] = static_cast<float>(wr[static_cast<int64_t>(g[k]) * kernel + j]);
  }
}

__device__ __forceinline__ void fma_quad(float (&acc)[4], const float (&ws)[4], const float4 v) {
  acc[0] += ws[0] * v.x;
  acc[1] += ws[1] * v.y;
  acc[2] += ws[2] * v.z;
  acc[3] += ws[3] * v.w;
}

template <typename T, bool kDynamic, bool kSameHead, bool kDense>
__global__ void __launch_bounds__(256) forward_tiled_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                            T* __restrict__ y, int tin, int tout, int channels,
                                                            int groups, int kernel, int offset, int dilation) {
  extern __shared__ unsigned char shared_raw[];
  float4* xs = reinterpret_cast<float4*>(shared_raw);  // [rows][kQuads]
  const int tid = threadIdx.x;
  const int q = tid % kQuads, ty = tid / kQuads;
  const int c0 = blockIdx.x * kChannels + 4 * q;
  const int t0 = blockIdx.y * kRows;
  const int64_t b = blockIdx.z;
  const int span = dilation * (kernel - 1) + 1;
  // kDense: the last chunk's window may run kTaps - 1 rows past the span.
  const int rows = kRows + span - 1 + (kDense ? kTaps - 1 : 0);
  const T* xb = x + b * tin * channels;
  for (int i = tid; i < rows * kQuads; i += 256) {
    const int r = i / kQuads, c = blockIdx.x * kChannels + 4 * (i % kQuads);
    const int p = t0 + offset + r;
    xs[i] = (c < channels && p >= 0 && p < tin) ? load_quad(xb + static_cast<int64_t>(p) * channels + c)
                                                 : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  __syncthreads();
  if (c0 >= channels) return;
  const int gsize = channels / groups;
  int g[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) g[k] = (c0 + k) / gsize;
  const int r0 = ty * kRowsPerThread;
  // The dynamic kernel's [G, K] block of row i (rows past the end are
  // computed, not stored).
  auto row_weights = [&](int i) {
    return kDynamic ? w + (b * tout + min(t0 + r0 + i, tout - 1)) * groups * kernel : w;
  };
  float acc[kRowsPerThread][4];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[i][k] = 0.f;
  }
  float ws[4];
  if (kDense) {
    for (int j0 = 0; j0 < kernel; j0 += kTaps) {
      float4 win[kRowsPerThread + kTaps - 1];
#pragma unroll
      for (int i = 0; i < kRowsPerThread + kTaps - 1; ++i) win[i] = xs[(r0 + j0 + i) * kQuads + q];
#pragma unroll
      for (int jj = 0; jj < kTaps; ++jj) {
        if (j0 + jj >= kernel) break;
        if (!kDynamic) tap_weights<T, kSameHead>(w, g, kernel, j0 + jj, ws);
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          if (kDynamic) tap_weights<T, kSameHead>(row_weights(i), g, kernel, j0 + jj, ws);
          fma_quad(acc[i], ws, win[i + jj]);
        }
      }
    }
  } else {
    for (int j = 0; j < kernel; ++j) {
      if (!kDynamic) tap_weights<T, kSameHead>(w, g, kernel, j, ws);
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        if (kDynamic) tap_weights<T, kSameHead>(row_weights(i), g, kernel, j, ws);
        fma_quad(acc[i], ws, xs[(r0 + i + j * dilation) * kQuads + q]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int t = t0 + r0 + i;
    if (t >= tout) break;
    store_quad(y + (b * tout + t) * channels + c0, acc[i]);
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

// Shared kernels, register-tiled (fp32 accumulation, C % 4 == 0, dilation
// 1): the tile's gy rows and window rows staged as float4; a thread owns 4
// channels x kTaps taps of one slice of the tile's rows, reading each gy row
// once and a window of kTaps + 7 input rows per 8 rows (instead of two
// shared loads per multiply-add); the slices meet in shared memory, and the
// tile adds one value per (channel, tap) to gw.
template <typename T>
__global__ void __launch_bounds__(256) grad_weight_shared_tiled_kernel(const T* __restrict__ gy,
                                                                       const T* __restrict__ x,
                                                                       float* __restrict__ gw, int tin, int tout,
                                                                       int channels, int kernel, int offset,
                                                                       int slices) {
  extern __shared__ unsigned char shared_raw[];
  const int xrows = kRows + kernel - 1 + kTaps - 1;
  float4* xs = reinterpret_cast<float4*>(shared_raw);  // [xrows][kQuads]
  float4* gs = xs + xrows * kQuads;                      // [kRows][kQuads]
  float* red = reinterpret_cast<float*>(gs + kRows * kQuads);  // [kChannels][kernel]
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kRows, cb = blockIdx.x * kChannels;
  const T* xb = x + b * tin * channels;
  const T* gb = gy + b * tout * channels;
  for (int i = tid; i < xrows * kQuads; i += 256) {
    const int r = i / kQuads, c = cb + 4 * (i % kQuads), p = t0 + offset + r;
    xs[i] = (c < channels && p >= 0 && p < tin) ? load_quad(xb + static_cast<int64_t>(p) * channels + c)
                                                 : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int i = tid; i < kRows * kQuads; i += 256) {
    const int r = i / kQuads, c = cb + 4 * (i % kQuads), t = t0 + r;
    gs[i] = (c < channels && t < tout) ? load_quad(gb + static_cast<int64_t>(t) * channels + c)
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int i = tid; i < kChannels * kernel; i += 256) red[i] = 0.f;
  __syncthreads();
  const int q = tid % kQuads;
  const int chunks = (kernel + kTaps - 1) / kTaps, rows = kRows / slices;
  for (int unit = tid / kQuads; unit < chunks * slices; unit += kRowThreads) {
    const int j0 = (unit % chunks) * kTaps, first = (unit / chunks) * rows;
    float acc[kTaps][4];
#pragma unroll
    for (int jj = 0; jj < kTaps; ++jj) {
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[jj][k] = 0.f;
    }
    for (int r = first; r < first + rows; r += kRowsPerThread) {
      float4 win[kRowsPerThread + kTaps - 1];
#pragma unroll
      for (int i = 0; i < kRowsPerThread + kTaps - 1; ++i) win[i] = xs[(r + j0 + i) * kQuads + q];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i) {
        const float4 gv = gs[(r + i) * kQuads + q];
        const float gg[4] = {gv.x, gv.y, gv.z, gv.w};
#pragma unroll
        for (int jj = 0; jj < kTaps; ++jj) fma_quad(acc[jj], gg, win[i + jj]);
      }
    }
#pragma unroll
    for (int jj = 0; jj < kTaps; ++jj) {
      if (j0 + jj >= kernel) break;
#pragma unroll
      for (int k = 0; k < 4; ++k) atomicAdd(red + (4 * q + k) * kernel + j0 + jj, acc[jj][k]);
    }
  }
  __syncthreads();
  for (int i = tid; i < kChannels * kernel; i += 256) {
    const int c = cb + i / kernel;
    if (c < channels) atomicAdd(gw + static_cast<int64_t>(c) * kernel + i % kernel, red[i]);
  }
}

// Dynamic kernels, tiled (fp32 accumulation): d w[b, t, g, j] = sum over
// the tile's channels of g of gy[b, t, c] * x[b, t + offset + j d, c], with
// the tile's gy rows and window rows staged in shared memory (rows padded
// to 65 floats, so a warp's 32 consecutive rows hit 32 banks). A thread
// owns one (row, head, kTaps taps): one gy load per kTaps multiply-adds.
// kAtomic where a head may span channel tiles (64 % (C / G) != 0): the tiles'
// parts are added into a zeroed gw; otherwise each value is stored once.
constexpr int kPadded = kChannels + 1;

template <typename T, bool kAtomic>
__global__ void __launch_bounds__(256) grad_weight_dynamic_tiled_kernel(const T* __restrict__ gy,
                                                                        const T* __restrict__ x,
                                                                        float* __restrict__ gw, int tin, int tout,
                                                                        int channels, int groups, int kernel,
                                                                        int offset, int dilation) {
  extern __shared__ unsigned char shared_raw[];
  const int span = dilation * (kernel - 1) + 1;
  const int xrows = kRows + span - 1;
  float* xs = reinterpret_cast<float*>(shared_raw);  // [xrows][kPadded]
  float* gs = xs + xrows * kPadded;                   // [kRows][kPadded]
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.z;
  const int t0 = blockIdx.y * kRows, cb = blockIdx.x * kChannels;
  const int ce = min(cb + kChannels, channels);
  const T* xb = x + b * tin * channels;
  const T* gb = gy + b * tout * channels;
  for (int i = tid; i < xrows * kChannels; i += 256) {
    const int r = i / kChannels, cc = i % kChannels, p = t0 + offset + r;
    xs[r * kPadded + cc] = (cb + cc < channels && p >= 0 && p < tin)
                               ? static_cast<float>(xb[static_cast<int64_t>(p) * channels + cb + cc])
                               : 0.f;
  }
  for (int i = tid; i < kRows * kChannels; i += 256) {
    const int r = i / kChannels, cc = i % kChannels, t = t0 + r;
    gs[r * kPadded + cc] = (cb + cc < channels && t < tout)
                               ? static_cast<float>(gb[static_cast<int64_t>(t) * channels + cb + cc])
                               : 0.f;
  }
  __syncthreads();
  const int gsize = channels / groups;
  const int g_first = cb / gsize, heads = (ce - 1) / gsize - g_first + 1;
  const int chunks = (kernel + kTaps - 1) / kTaps;
  for (int unit = tid; unit < kRows * chunks * heads; unit += 256) {
    const int r = unit % kRows, rest = unit / kRows;
    const int j0 = (rest % chunks) * kTaps, g = g_first + rest / chunks;
    const int t = t0 + r;
    if (t >= tout) continue;
    const int lo = max(g * gsize, cb) - cb, hi = min((g + 1) * gsize, ce) - cb;
    float acc[kTaps];
#pragma unroll
    for (int jj = 0; jj < kTaps; ++jj) acc[jj] = 0.f;
    for (int cc = lo; cc < hi; ++cc) {
      const float gv = gs[r * kPadded + cc];
#pragma unroll
      for (int jj = 0; jj < kTaps; ++jj) {
        if (j0 + jj < kernel) acc[jj] += gv * xs[(r + (j0 + jj) * dilation) * kPadded + cc];
      }
    }
    float* out = gw + ((b * tout + t) * groups + g) * kernel + j0;
#pragma unroll
    for (int jj = 0; jj < kTaps; ++jj) {
      if (j0 + jj >= kernel) break;
      if (kAtomic) atomicAdd(out + jj, acc[jj]); else out[jj] = acc[jj];
    }
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

// Whether t's data can be read four elements at a time.
bool quad_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % (4 * t.element_size()) == 0;
}

// make(a, b, c) with each flag as std::integral_constant: one kernel
// instantiation per combination.
template <typename Make>
auto pick(bool a, bool b, bool c, Make make) {
  using T = std::true_type;
  using F = std::false_type;
  return a ? (b ? (c ? make(T{}, T{}, T{}) : make(T{}, T{}, F{})) : (c ? make(T{}, F{}, T{}) : make(T{}, F{}, F{})))
           : (b ? (c ? make(F{}, T{}, T{}) : make(F{}, T{}, F{})) : (c ? make(F{}, F{}, T{}) : make(F{}, F{}, F{})));
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
    if (std::is_same<Acc, float>::value && s.channels % 4 == 0 && quad_aligned(in) && quad_aligned(out)) {
      const bool same_head = (s.channels / s.groups) % 4 == 0, dense = s.dilation == 1;
      const auto tiled = pick(dynamic, same_head, dense, [](auto dyn, auto same, auto den) {
        return forward_tiled_kernel<scalar_t, decltype(dyn)::value, decltype(same)::value, decltype(den)::value>;
      });
      const size_t tiled_bytes = bytes + (dense ? sizeof(float) * kChannels * (kTaps - 1) : 0);
      if (fits_shared(tiled, tiled_bytes)) {
        tiled<<<tiles(s, s.tout), 256, tiled_bytes, stream>>>(in.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
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
      if (std::is_same<Acc, float>::value) {
        const bool atomic = kChannels % (s.channels / s.groups) != 0;
        const auto tiled = atomic ? grad_weight_dynamic_tiled_kernel<scalar_t, true>
                                  : grad_weight_dynamic_tiled_kernel<scalar_t, false>;
        const size_t bytes = sizeof(float) * kPadded * static_cast<size_t>(kRows + s.span - 1 + kRows);
        if (fits_shared(tiled, bytes)) {
          if (atomic) gw.zero_();
          tiled<<<tiles(s, s.tout), 256, bytes, stream>>>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                         gw.data_ptr<float>(), s.tin, s.tout, s.channels,
                                                         s.groups, s.kernel, s.offset, s.dilation);
          return;
        }
      }
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
      if (std::is_same<Acc, float>::value && s.dilation == 1 && s.channels % 4 == 0 && quad_aligned(x) &&
          quad_aligned(gy)) {
        const auto tiled = grad_weight_shared_tiled_kernel<scalar_t>;
        const size_t tiled_bytes = sizeof(float4) * kQuads * static_cast<size_t>(2 * kRows + s.kernel - 1 + kTaps - 1) +
                                   sizeof(float) * kChannels * static_cast<size_t>(s.kernel);
        if (fits_shared(tiled, tiled_bytes)) {
          // Row slices per tile: enough (chunk, slice) units for the block's
          // 16 thread rows, a power of two dividing the tile's 128 rows.
          const int chunks = (s.kernel + kTaps - 1) / kTaps;
          int slices = 1;
          while (slices * 2 * chunks <= kRowThreads && slices * 2 * kRowsPerThread <= kRows) slices *= 2;
          tiled<<<tiles(s, s.tout), 256, tiled_bytes, stream>>>(gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                               reinterpret_cast<float*>(per_channel.data_ptr()),
                                                               s.tin, s.tout, s.channels, s.kernel, s.offset,
                                                               slices);
          return;
        }
      }
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
