#pragma once

// Softmax attention of one query per sequence over a KV cache, as two CUDA
// kernels (flash-decoding: the keys split into chunks, each chunk's scores,
// running max, sum and weighted values in one pass, then the chunks
// combined), instead of the ~10 launches of ops::attention_decode's LibTorch
// form (two products, the mask built, added, a softmax, casts). Masked keys
// are never read, so a step over a large reserved buffer costs the keys it
// holds. Compiled only when recast is built against a LibTorch with CUDA.
//
// q [B, H, 1, d]; k [B, Hkv, T, d], v [B, Hkv, T, dv] (H a multiple of Hkv,
// d and dv <= 256; the last dimension contiguous, any other strides: views
// of a cache's buffers); fp32, fp16 or bf16, one dtype; scores, softmax and
// the weighted sum in fp32. Key j is attended when
//   key_padding[b, j] (bool [B, T], or undefined: all), and
//   with `slot` (int64 [1] on the device, fixed-shape steps) and window > 0:
//     j > slot - window;
//   without `slot`, when causal: key_offset + j <= query_offset, and with
//     window > 0: key_offset + j > query_offset - window.
// A row with no attended key gives zeros (decoding always holds the query's
// own key). Returns [B, H, 1, dv] in q's dtype.

#include <ATen/ATen.h>

#include <cstdint>

namespace recast::ops::cuda {

struct DecodeMask {
  at::Tensor key_padding, slot;
  bool causal = false;
  int64_t query_offset = 0, key_offset = 0, window = 0;
};

bool attention_decode_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const DecodeMask& mask);

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const DecodeMask& mask, double scale);

}  // namespace recast::ops::cuda
