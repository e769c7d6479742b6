#include "recast/ops/cuda/linear_attention_step.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace recast::ops::cuda {
namespace {

constexpr int kColumns = 64;  // threads along dv (one warp pair: coalesced rows of s)
constexpr int kRowGroups = 4;  // groups of threads splitting the k rows of s

// One block per (batch, head). Thread (tx, ty) owns columns tx, tx + 64, ...
// of s and rows ty, ty + 4, ... of them; the row groups' partial read-outs are
// summed in shared memory. All arithmetic in fp32.
template <typename T>
__global__ void step_kernel(const T* __restrict__ q, const T* __restrict__ k,
                            const T* __restrict__ v, const bool* __restrict__ keep,
                            float* __restrict__ s, float* __restrict__ z, T* __restrict__ y,
                            int heads, int features, int dv, float eps) {
  extern __shared__ float shared[];
  float* qs = shared;                      // [features]
  float* ks = qs + features;               // [features]
  float* part = ks + features;             // [kRowGroups][dv]
  float* dens = part + kRowGroups * dv;    // [kRowGroups * kColumns]
  const int bh = blockIdx.x, b = bh / heads;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kColumns + tx;
  const int threads = kColumns * kRowGroups;
  const bool on = keep == nullptr || keep[b];

  // z += k and the denominator's partial sums q . z.
  float den = 0.f;
  for (int i = tid; i < features; i += threads) {
    const float qi = static_cast<float>(q[bh * features + i]);
    const float ki = on ? static_cast<float>(k[bh * features + i]) : 0.f;
    qs[i] = qi;
    ks[i] = ki;
    const float zi = z[bh * features + i] + ki;
    z[bh * features + i] = zi;
    den += qi * zi;
  }
  dens[tid] = den;
  __syncthreads();
  for (int stride = threads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) dens[tid] += dens[tid + stride];
    __syncthreads();
  }
  den = fmaxf(dens[0], eps);

  // s += k v^T on this thread's rows and columns, and its share of q^T s.
  float* sb = s + static_cast<int64_t>(bh) * features * dv;
  for (int j = tx; j < dv; j += kColumns) {
    const float vj = on ? static_cast<float>(v[bh * dv + j]) : 0.f;
    float acc = 0.f;
    for (int i = ty; i < features; i += kRowGroups) {
      const float sij = sb[i * dv + j] + ks[i] * vj;
      sb[i * dv + j] = sij;
      acc += qs[i] * sij;
    }
    part[ty * dv + j] = acc;
  }
  __syncthreads();
  if (ty == 0) {
    for (int j = tx; j < dv; j += kColumns) {
      float acc = 0.f;
      for (int g = 0; g < kRowGroups; ++g) acc += part[g * dv + j];
      y[bh * dv + j] = static_cast<T>(acc / den);
    }
  }
}

}  // namespace

bool linear_attention_step_supported(const at::Tensor& fq, const at::Tensor& fk,
                                     const at::Tensor& v, const at::Tensor& s,
                                     const at::Tensor& z) {
  const auto t = v.scalar_type();
  return fq.is_cuda() && fq.dim() == 4 && fq.size(2) == 1 && fk.sizes() == fq.sizes() &&
         v.dim() == 4 && v.size(2) == 1 && fq.scalar_type() == t && fk.scalar_type() == t &&
         (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) && s.is_cuda() &&
         s.scalar_type() == at::kFloat && z.scalar_type() == at::kFloat && s.is_contiguous() &&
         z.is_contiguous() && fk.device() == fq.device() && v.device() == fq.device() &&
         s.device() == fq.device() && z.device() == fq.device();
}

at::Tensor linear_attention_step(const at::Tensor& fq, const at::Tensor& fk, const at::Tensor& v,
                                 const at::Tensor& keep, at::Tensor& s, at::Tensor& z,
                                 double eps) {
  const c10::cuda::CUDAGuard guard(fq.device());
  const at::Tensor q = fq.contiguous(), k = fk.contiguous(), vv = v.contiguous();
  const int64_t b = q.size(0), h = q.size(1), f = q.size(3), dv = vv.size(3);
  at::Tensor keep_b;
  if (keep.defined()) keep_b = keep.to(q.device(), at::kBool).reshape({b}).contiguous();
  at::Tensor y = at::empty({b, h, 1, dv}, vv.options());
  if (b * h == 0) return y;
  const dim3 block(kColumns, kRowGroups);
  const size_t shared =
      sizeof(float) * static_cast<size_t>(2 * f + kRowGroups * dv + kRowGroups * kColumns);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vv.scalar_type(), "linear_attention_step", [&] {
    step_kernel<scalar_t><<<static_cast<unsigned>(b * h), block, shared, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), vv.data_ptr<scalar_t>(),
        keep_b.defined() ? keep_b.data_ptr<bool>() : nullptr, s.data_ptr<float>(),
        z.data_ptr<float>(), y.data_ptr<scalar_t>(), static_cast<int>(h), static_cast<int>(f),
        static_cast<int>(dv), static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace recast::ops::cuda
