#include "recast/ops/cuda/attention_decode.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>

namespace recast::ops::cuda {
namespace {

constexpr int kWarps = 4;        // warps per block, each walking every kWarps-th key of the chunk
constexpr int kPerLane = 8;      // d, dv <= 32 * kPerLane = 256
constexpr int kCombineThreads = 128;

struct Params {
  int heads, group, d, dv;
  int64_t tk, chunk, splits;
  int64_t qs_b, qs_h, ks_b, ks_h, ks_t, vs_b, vs_h, vs_t;
  int64_t query_offset, key_offset, window;
  bool causal;
  float scale;
};

__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Block (b * H + h, split): the keys [split * chunk, (split + 1) * chunk) of
// that row and head. Writes the chunk's max m, sum l = sum exp(s - m) and
// acc = sum exp(s - m) v (fp32; m = -inf, l = 0 when no key is attended).
template <typename T>
__global__ void partial_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const bool* __restrict__ pad, const int64_t* __restrict__ slot, Params p,
                               float* __restrict__ part_acc, float* __restrict__ part_ml) {
  extern __shared__ float shared_acc[];  // [kWarps][dv]
  __shared__ float shared_m[kWarps], shared_l[kWarps];
  const int bh = blockIdx.x;
  const int64_t split = blockIdx.y;
  const int b = bh / p.heads, h = bh % p.heads, hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  float qr[kPerLane];
  const T* qp = q + b * p.qs_b + h * p.qs_h;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < p.d ? static_cast<float>(qp[d]) * p.scale : 0.f;
  }
  int64_t lo = split * p.chunk, hi = lo + p.chunk < p.tk ? lo + p.chunk : p.tk;
  if (slot != nullptr) {
    if (p.window > 0) lo = imax(lo, slot[0] - p.window + 1);
  } else if (p.causal) {
    hi = imin(hi, p.query_offset - p.key_offset + 1);
    if (p.window > 0) lo = imax(lo, p.query_offset - p.window + 1 - p.key_offset);
  }
  const T* kb = k + b * p.ks_b + hk * p.ks_h;
  const T* vb = v + b * p.vs_b + hk * p.vs_h;
  float m = -INFINITY, l = 0.f, acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.f;
  for (int64_t j = lo + warp; j < hi; j += kWarps) {
    if (pad != nullptr && !pad[static_cast<int64_t>(b) * p.tk + j]) continue;  // the same j on every lane
    const T* kp = kb + j * p.ks_t;
    const T* vp = vb + j * p.vs_t;
    // The value row is loaded before the score's reduction, to overlap the two reads.
    float vr[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      vr[i] = d < p.dv ? static_cast<float>(vp[d]) : 0.f;
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < p.d) s += qr[i] * static_cast<float>(kp[d]);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float c = __expf(m - m_new);  // 0 while m is -inf
    const float e = __expf(s - m_new);
    l = l * c + e;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] = acc[i] * c + e * vr[i];
    m = m_new;
  }
  if (lane == 0) shared_m[warp] = m, shared_l[warp] = l;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < p.dv) shared_acc[warp * p.dv + d] = acc[i];
  }
  __syncthreads();
  float mm = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, shared_m[w]);
  const int64_t at = static_cast<int64_t>(bh) * p.splits + split;
  for (int d = threadIdx.x; d < p.dv; d += blockDim.x) {
    float a = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (shared_m[w] > -INFINITY) a += shared_acc[w * p.dv + d] * __expf(shared_m[w] - mm);
    }
    part_acc[at * p.dv + d] = a;
  }
  if (threadIdx.x == 0) {
    float ll = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (shared_m[w] > -INFINITY) ll += shared_l[w] * __expf(shared_m[w] - mm);
    }
    part_ml[2 * at] = mm;
    part_ml[2 * at + 1] = ll;
  }
}

// Block b * H + h: the chunks combined, out = sum_s exp(m_s - M) acc_s / L.
template <typename T>
__global__ void combine_kernel(const float* __restrict__ part_acc, const float* __restrict__ part_ml, Params p,
                               T* __restrict__ out) {
  const int64_t bh = blockIdx.x;
  const float* ml = part_ml + 2 * bh * p.splits;
  float mm = -INFINITY;
  for (int64_t s = 0; s < p.splits; ++s) mm = fmaxf(mm, ml[2 * s]);
  float ll = 0.f;
  for (int64_t s = 0; s < p.splits; ++s) {
    if (ml[2 * s] > -INFINITY) ll += ml[2 * s + 1] * __expf(ml[2 * s] - mm);
  }
  const float inv = ll > 0.f ? 1.f / ll : 0.f;
  const float* acc = part_acc + bh * p.splits * p.dv;
  for (int d = threadIdx.x; d < p.dv; d += blockDim.x) {
    float a = 0.f;
    for (int64_t s = 0; s < p.splits; ++s) {
      if (ml[2 * s] > -INFINITY) a += acc[s * p.dv + d] * __expf(ml[2 * s] - mm);
    }
    out[bh * p.dv + d] = static_cast<T>(a * inv);
  }
}

}  // namespace

bool attention_decode_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const DecodeMask& mask) {
  const auto t = q.scalar_type();
  const bool dtype_ok = (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) && k.scalar_type() == t &&
                        v.scalar_type() == t;
  const bool shape_ok = q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1 &&
                        q.size(0) == k.size(0) && k.sizes().slice(0, 3) == v.sizes().slice(0, 3) &&
                        q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0 &&
                        q.size(3) <= 32 * kPerLane && v.size(3) <= 32 * kPerLane && q.stride(3) == 1 &&
                        k.stride(3) == 1 && v.stride(3) == 1;
  const bool device_ok = q.is_cuda() && k.device() == q.device() && v.device() == q.device() &&
                         (!mask.key_padding.defined() || mask.key_padding.device() == q.device()) &&
                         (!mask.slot.defined() || (mask.slot.device() == q.device() &&
                                                   mask.slot.scalar_type() == at::kLong && mask.slot.numel() == 1));
  const bool pad_ok = !mask.key_padding.defined() ||
                      (mask.key_padding.dim() == 2 && shape_ok && mask.key_padding.size(0) == q.size(0) &&
                       mask.key_padding.size(1) == k.size(2));
  return dtype_ok && shape_ok && device_ok && pad_ok;
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const DecodeMask& mask, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t b = q.size(0), h = q.size(1), hkv = k.size(1), tk = k.size(2), dv = v.size(3);
  at::Tensor out = at::empty({b, h, 1, dv}, q.options());
  if (b * h == 0 || dv == 0) return out;
  at::Tensor pad;
  if (mask.key_padding.defined()) pad = mask.key_padding.to(at::kBool).contiguous();
  Params p{};
  p.heads = static_cast<int>(h);
  p.group = static_cast<int>(h / hkv);
  p.d = static_cast<int>(q.size(3));
  p.dv = static_cast<int>(dv);
  p.tk = tk;
  // Enough blocks to fill the GPU (two per SM), chunks of at most 1024 keys;
  // a function of the shapes only, so a captured graph keeps its grid.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t rows = b * h;
  int64_t splits = std::max<int64_t>(1, (2 * sms + rows - 1) / rows);
  splits = std::max(splits, (tk + 1023) / 1024);
  splits = std::min(splits, std::max<int64_t>(1, (tk + 63) / 64));
  p.chunk = std::max<int64_t>(1, (tk + splits - 1) / splits);
  p.splits = (tk + p.chunk - 1) / p.chunk;
  if (p.splits == 0) p.splits = 1;
  p.qs_b = q.stride(0), p.qs_h = q.stride(1);
  p.ks_b = k.stride(0), p.ks_h = k.stride(1), p.ks_t = k.stride(2);
  p.vs_b = v.stride(0), p.vs_h = v.stride(1), p.vs_t = v.stride(2);
  p.causal = mask.causal;
  p.query_offset = mask.query_offset;
  p.key_offset = mask.key_offset;
  p.window = mask.window;
  p.scale = static_cast<float>(scale);
  at::Tensor part_acc = at::empty({rows, p.splits, dv}, q.options().dtype(at::kFloat));
  at::Tensor part_ml = at::empty({rows, p.splits, 2}, q.options().dtype(at::kFloat));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(p.splits));
  const size_t shared = sizeof(float) * static_cast<size_t>(kWarps * dv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "attention_decode", [&] {
    partial_kernel<scalar_t><<<grid, kWarps * 32, shared, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        pad.defined() ? pad.data_ptr<bool>() : nullptr,
        mask.slot.defined() ? mask.slot.data_ptr<int64_t>() : nullptr, p, part_acc.data_ptr<float>(),
        part_ml.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    combine_kernel<scalar_t><<<static_cast<unsigned>(rows), kCombineThreads, 0, stream>>>(
        part_acc.data_ptr<float>(), part_ml.data_ptr<float>(), p, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace recast::ops::cuda
