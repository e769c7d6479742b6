#include "recast/io/sniff.h"

#include "recast/core/error.h"

#include <algorithm>
#include <cstring>
#include <string_view>

namespace recast::io {
namespace {

bool starts_with(const uint8_t* data, size_t size, std::string_view magic) {
  return size >= magic.size() && std::memcmp(data, magic.data(), magic.size()) == 0;
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

}  // namespace

FileFormat sniff_format(const uint8_t* data, size_t size) {
  // These magics read as header lengths over the 100 MB limit, so they never
  // clash with a valid safetensors file.
  if (starts_with(data, size, "\x93NUMPY")) return FileFormat::Numpy;
  if (starts_with(data, size, "GGUF")) return FileFormat::Gguf;
  if (starts_with(data, size, "\x89HDF\r\n\x1a\n")) return FileFormat::Hdf5;
  // A safetensors header is JSON right after the 8-byte length. Neither a zip
  // nor a pickle can have '{' there (compression method; pickle opcodes), while
  // "PK\x03\x04" alone would be a legal header length of 67 MB.
  if (size >= 9) {
    size_t i = 8;
    while (i < size && i < 4096 &&
           (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) {
      ++i;
    }
    if (i < size && data[i] == '{') return FileFormat::Safetensors;
  }
  if (starts_with(data, size, "PK\x03\x04") || starts_with(data, size, "PK\x05\x06")) {
    // Entry names appear in the local headers (start) and the central
    // directory (end); both are plain text.
    size_t tail = std::min<size_t>(size, 64 * 1024);
    std::string_view head(reinterpret_cast<const char*>(data), std::min<size_t>(size, 4096));
    std::string_view end(reinterpret_cast<const char*>(data + size - tail), tail);
    for (std::string_view part : {head, end}) {
      if (contains(part, "/constants.pkl") || contains(part, "/code/"))
        return FileFormat::TorchScript;
    }
    for (std::string_view part : {head, end}) {
      if (contains(part, "data.pkl")) return FileFormat::TorchZip;
    }
    if (contains(end, ".npy")) return FileFormat::Numpy;
    return FileFormat::Zip;
  }
  if (size >= 2 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5) return FileFormat::Pickle;
  return FileFormat::Unknown;
}

const char* format_name(FileFormat format) {
  switch (format) {
    case FileFormat::Safetensors: return "safetensors";
    case FileFormat::Pickle: return "a pickle file (torch.save legacy format or plain pickle)";
    case FileFormat::TorchZip: return "a PyTorch torch.save archive (pickle inside a zip)";
    case FileFormat::TorchScript: return "a TorchScript archive (torch.jit.save)";
    case FileFormat::Zip: return "a zip archive";
    case FileFormat::Numpy: return "a NumPy .npy/.npz file";
    case FileFormat::Gguf: return "a GGUF file";
    case FileFormat::Hdf5: return "an HDF5 (Keras .h5) file";
    case FileFormat::Unknown: return "an unknown format";
  }
  return "an unknown format";
}

void refuse_unsafe_format(const uint8_t* data, size_t size, const std::string& path) {
  FileFormat format = sniff_format(data, size);
  switch (format) {
    case FileFormat::Pickle:
    case FileFormat::TorchZip:
    case FileFormat::TorchScript:
      throw Error(msg(path, ": is ", format_name(format),
                      "; recast refuses pickle-based files because loading one can run arbitrary "
                      "code. Convert it to safetensors where you trust it, e.g. "
                      "safetensors.torch.save_file(torch.load(path, weights_only=True), "
                      "'model.safetensors')"));
    case FileFormat::Zip:
    case FileFormat::Numpy:
    case FileFormat::Gguf:
    case FileFormat::Hdf5:
      throw Error(msg(path, ": is ", format_name(format),
                      ", not safetensors; recast reads safetensors checkpoints only"));
    case FileFormat::Safetensors:
    case FileFormat::Unknown: break;
  }
}

}  // namespace recast::io
