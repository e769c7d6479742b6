#pragma once

// Recognises checkpoint formats by content, not by extension, so that pickle
// and TorchScript files are refused however they are named. recast never calls
// torch::load / torch::jit::load / pickle_load on a user's file: unpickling runs
// code chosen by whoever wrote the file.

#include <cstddef>
#include <cstdint>
#include <string>

namespace recast::io {

enum class FileFormat {
  Safetensors,  // plausible: u64 header length, then '{' (after whitespace)
  Pickle,       // torch.save legacy format or any pickle (protocol >= 2)
  TorchZip,     // torch.save zip archive (.pt/.bin/.pth with data.pkl)
  TorchScript,  // torch.jit.save archive (code/, constants.pkl)
  Zip,          // some other zip archive
  Numpy,        // .npy / .npz
  Gguf,
  Hdf5,  // Keras .h5
  Unknown,
};

// `data` holds the whole file (a mapping); only its start and its last 64 KiB
// (a zip's central directory) are read.
FileFormat sniff_format(const uint8_t* data, size_t size);
const char* format_name(FileFormat format);

// Throws recast::Error if the file is a known non-safetensors format, with a
// message that says how to convert it. Safetensors and Unknown pass (the header
// parser then explains what is wrong).
void refuse_unsafe_format(const uint8_t* data, size_t size, const std::string& path);

}  // namespace recast::io
