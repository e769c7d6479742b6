#pragma once

// Device and dtype selection shared by every verb: --device cpu|cuda|cuda:N|auto
// and --dtype f32|bf16|f16.

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <string_view>

namespace recast {

// "auto" picks CUDA when LibTorch sees a GPU. Asking for CUDA without one is an
// error (UsageError), never a silent fallback.
c10::Device select_device(std::string_view spec);
c10::ScalarType parse_dtype(std::string_view spec);
// Computing in `dtype` on `device` is possible: LibTorch's CPU kernels have no
// half precision for layer norm, softmax and others, so f16 on the CPU is
// refused up front (UsageError naming --dtype) instead of failing mid-model.
void check_compute_dtype(c10::ScalarType dtype, c10::Device device);
// "f32", "bf16", "f16", ... (the CLI spelling).
std::string dtype_flag_name(c10::ScalarType type);
bool cuda_available();

// fp32 means fp32: LibTorch lets cuDNN convolutions use TF32 (10-bit mantissa)
// by default, which moves ResNet logits by ~1e-4. recast turns TF32 off for
// cuBLAS and cuDNN unless `allow_tf32` (the verbs' --tf32 flag).
void set_tf32(bool allow_tf32);

// Waits for the device's queued work (CUDA); nothing on the CPU. Timings
// read the clock after it.
void synchronize(c10::Device device);
// Peak bytes allocated on a CUDA device since the last call (the peak is
// reset after reading), in MB; 0 on the CPU.
double take_peak_allocated_mb(c10::Device device);

}  // namespace recast
