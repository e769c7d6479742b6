#include "recast/io/safetensors.h"

#include "recast/core/error.h"
#include "recast/core/torch_compat.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace recast::io {

std::optional<at::ScalarType> to_scalar_type(Dtype dtype) {
  switch (dtype) {
    case Dtype::BOOL: return at::kBool;
    case Dtype::U8: return at::kByte;
    case Dtype::I8: return at::kChar;
    case Dtype::I16: return at::kShort;
    case Dtype::I32: return at::kInt;
    case Dtype::I64: return at::kLong;
    case Dtype::F16: return at::kHalf;
    case Dtype::BF16: return at::kBFloat16;
    case Dtype::F32: return at::kFloat;
    case Dtype::F64: return at::kDouble;
    case Dtype::C64: return at::kComplexFloat;
#if RECAST_HAS_FLOAT8
    case Dtype::F8_E5M2: return at::kFloat8_e5m2;
    case Dtype::F8_E4M3: return at::kFloat8_e4m3fn;
#endif
#if RECAST_HAS_FLOAT8_FNUZ
    case Dtype::F8_E4M3FNUZ: return at::kFloat8_e4m3fnuz;
    case Dtype::F8_E5M2FNUZ: return at::kFloat8_e5m2fnuz;
#endif
#if RECAST_HAS_UINT_WIDE
    case Dtype::U16: return at::kUInt16;
    case Dtype::U32: return at::kUInt32;
    case Dtype::U64: return at::kUInt64;
#endif
    default: return std::nullopt;
  }
}

std::optional<Dtype> from_scalar_type(at::ScalarType type) {
  static const Dtype kAll[] = {
      Dtype::BOOL, Dtype::U8,      Dtype::I8,      Dtype::I16,         Dtype::I32,
      Dtype::I64,  Dtype::F16,     Dtype::BF16,    Dtype::F32,         Dtype::F64,
      Dtype::C64,  Dtype::F8_E5M2, Dtype::F8_E4M3, Dtype::F8_E4M3FNUZ, Dtype::F8_E5M2FNUZ,
      Dtype::U16,  Dtype::U32,     Dtype::U64};
  for (Dtype d : kAll) {
    if (to_scalar_type(d) == type) return d;
  }
  return std::nullopt;
}

at::Tensor SafetensorsFile::tensor(std::string_view name, bool copy) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) {
    throw Error(msg(path(), ": no tensor named ", quote(name), " (the file has ",
                    header_.tensors.size(), " tensors)"));
  }
  return tensor(*info, copy);
}

at::Tensor SafetensorsFile::tensor(const TensorInfo& info, bool copy) const {
  auto type = to_scalar_type(info.dtype);
  if (!type) {
    throw Error(msg(path(), ": tensor ", quote(info.name), ": dtype ", dtype_name(info.dtype),
                    " has no LibTorch equivalent in LibTorch ", compat::kTorchVersion));
  }
  uint8_t* data = file_->mutable_data() + header_.data_offset + info.begin;
  if (info.dtype == Dtype::BOOL) {
    for (uint64_t i = 0; i < info.nbytes(); ++i) {
      if (data[i] > 1) {
        throw Error(msg(path(), ": tensor ", quote(info.name), ": BOOL element ", i, " holds byte ",
                        int(data[i]), " (expected 0 or 1)"));
      }
    }
  }
  auto options = at::TensorOptions().dtype(*type);
  const size_t itemsize = std::max<size_t>(1, static_cast<size_t>(dtype_bits(info.dtype)) / 8);
  const bool aligned = reinterpret_cast<uintptr_t>(data) % itemsize == 0;
  if (copy || !aligned) {
    at::Tensor out = at::empty(info.shape, options);
    if (info.nbytes() > 0) std::memcpy(out.data_ptr(), data, info.nbytes());
    return out;
  }
  auto keep_alive = file_;
  return at::from_blob(
      data, info.shape, [keep_alive](void*) {}, options);
}

NamedTensors SafetensorsFile::load_all(bool copy) const {
  NamedTensors out;
  out.reserve(header_.tensors.size());
  for (const TensorInfo& info : header_.tensors) out.emplace_back(info.name, tensor(info, copy));
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const Metadata& metadata, const WriteProgress& on_write) {
  struct Item {
    TensorInfo info;
    at::Tensor data;  // CPU, contiguous
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    auto fail = [&](const std::string& rule) {
      throw Error(msg(path, ": tensor ", quote(name), ": ", rule));
    };
    if (name == "__metadata__") fail("the name is reserved by the safetensors format");
    if (name.find('\0') != std::string::npos) fail("the name contains a NUL character");
    if (!names.insert(name).second) fail("the name appears twice");
    if (!tensor.defined()) fail("tensor is undefined");
    auto dtype = from_scalar_type(tensor.scalar_type());
    if (!dtype) fail(msg("dtype ", tensor.scalar_type(), " cannot be stored in safetensors"));
    Item item;
    item.info.name = name;
    item.info.dtype = *dtype;
    item.info.shape = tensor.sizes().vec();
    item.data = tensor.detach().to(at::kCPU).contiguous();
    items.push_back(std::move(item));
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    if (a.info.dtype != b.info.dtype) return a.info.dtype > b.info.dtype;
    return a.info.name < b.info.name;
  });
  std::vector<TensorInfo> ordered;
  ordered.reserve(items.size());
  uint64_t offset = 0;
  for (Item& item : items) {
    item.info.begin = offset;
    offset += static_cast<uint64_t>(item.data.nbytes());
    item.info.end = offset;
    ordered.push_back(item.info);
  }
  const std::string header = serialize_header(ordered, metadata, path);
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i));

  AtomicFile out(path);
  out.write(length, sizeof length);
  out.write(header.data(), header.size());
  for (const Item& item : items) {
    if (item.data.nbytes() > 0) out.write(item.data.data_ptr(), item.data.nbytes());
    if (on_write) on_write(item.data.nbytes());
  }
  out.commit();
}

}  // namespace recast::io
