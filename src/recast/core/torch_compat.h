#pragma once

// The one place that knows which LibTorch version recast was built against
// (Debian's 1.13 on CPU machines, PyTorch 2.x on the GPU machine). Everything
// else tests the RECAST_HAS_* macros or calls the helpers below; nothing else may
// test TORCH_VERSION.

#include <torch/version.h>

#define RECAST_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||         \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention (fused attention) exists from 2.0.
#define RECAST_HAS_SDPA RECAST_TORCH_AT_LEAST(2, 0)
// at::kFloat8_e5m2 / kFloat8_e4m3fn from 2.1; the FNUZ variants from 2.2.
#define RECAST_HAS_FLOAT8 RECAST_TORCH_AT_LEAST(2, 1)
#define RECAST_HAS_FLOAT8_FNUZ RECAST_TORCH_AT_LEAST(2, 2)
// at::kUInt16 / kUInt32 / kUInt64 from 2.3.
#define RECAST_HAS_UINT_WIDE RECAST_TORCH_AT_LEAST(2, 3)

// Autocast is configured per device type (set_autocast_enabled(kCUDA, ...))
// from 2.4; before, through set_enabled / set_autocast_gpu_dtype.
#define RECAST_HAS_AUTOCAST_DEVICE_API RECAST_TORCH_AT_LEAST(2, 4)

namespace recast::compat {

inline constexpr int kTorchMajor = TORCH_VERSION_MAJOR;
inline constexpr int kTorchMinor = TORCH_VERSION_MINOR;
inline constexpr const char* kTorchVersion = TORCH_VERSION;

}  // namespace recast::compat
