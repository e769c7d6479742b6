#include "recast/core/device.h"

#include "recast/core/error.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstdlib>
#if RECAST_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace recast {

void set_tf32(bool allow_tf32) {
  at::globalContext().setAllowTF32CuBLAS(allow_tf32);
  at::globalContext().setAllowTF32CuDNN(allow_tf32);
}

void synchronize(c10::Device device) {
#if RECAST_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

double take_peak_allocated_mb(c10::Device device) {
#if RECAST_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return static_cast<double>(stats.allocated_bytes[aggregate].peak) / (1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return 0.0;
}

bool cuda_available() {
  return torch::cuda::is_available();
}

// In a data-parallel run (torchrun / recast launch), "cuda" and "auto" mean
// the device of this rank's LOCAL_RANK, as in torchrun scripts.
int local_rank_device() {
  const char* world = std::getenv("WORLD_SIZE");
  const char* local = std::getenv("LOCAL_RANK");
  if (!world || !local || std::atoi(world) <= 1) return 0;
  return std::max(0, std::atoi(local));
}

c10::Device select_device(std::string_view spec) {
  if (spec == "auto") {
    return cuda_available() ? select_device("cuda") : c10::Device(c10::kCPU);
  }
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec.substr(0, 4) == "cuda") {
    int index = spec.size() == 4 ? local_rank_device() : 0;
    if (spec.size() > 4) {
      if (spec[4] != ':' || spec.size() == 5 ||
          spec.find_first_not_of("0123456789", 5) != std::string_view::npos || spec.size() > 8) {
        throw UsageError(
            msg("--device: invalid value ", quote(spec), " (expected cpu, cuda, cuda:N or auto)"));
      }
      index = std::stoi(std::string(spec.substr(5)));
    }
    if (!cuda_available()) {
      throw UsageError(msg("--device ", spec, ": no CUDA device is available to this LibTorch"));
    }
    auto count = static_cast<int>(torch::cuda::device_count());
    if (index >= count) {
      throw UsageError(msg("--device ", spec, ": only ", count, " CUDA device(s) present"));
    }
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw UsageError(
      msg("--device: invalid value ", quote(spec), " (expected cpu, cuda, cuda:N or auto)"));
}

c10::ScalarType parse_dtype(std::string_view spec) {
  if (spec == "f32" || spec == "float32" || spec == "fp32") return c10::kFloat;
  if (spec == "bf16" || spec == "bfloat16") return c10::kBFloat16;
  if (spec == "f16" || spec == "float16" || spec == "fp16") return c10::kHalf;
  if (spec == "f64" || spec == "float64") return c10::kDouble;
  throw UsageError(msg("--dtype: invalid value ", quote(spec), " (expected f32, bf16 or f16)"));
}

void check_compute_dtype(c10::ScalarType dtype, c10::Device device) {
  if (dtype == c10::kHalf && device.is_cpu()) {
    throw UsageError(
        "--dtype f16: LibTorch's CPU kernels have no half precision for layer norm and softmax; "
        "use --dtype bf16 or f32 on the CPU, or f16 with --device cuda");
  }
}

std::string dtype_flag_name(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat: return "f32";
    case c10::kBFloat16: return "bf16";
    case c10::kHalf: return "f16";
    case c10::kDouble: return "f64";
    default: return c10::toString(type);
  }
}

}  // namespace recast
