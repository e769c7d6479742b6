// SafetensorsFile's LibTorch-free half: mapping, validation, header writing.

#include "recast/core/error.h"
#include "recast/io/safetensors.h"
#include "recast/io/sniff.h"

#include <nlohmann/json.hpp>

namespace recast::io {

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto file = MappedFile::open(path);
  refuse_unsafe_format(file->data(), file->size(), path);
  Header header = parse_header(file->data(), file->size(), path);
  return SafetensorsFile(std::move(file), std::move(header));
}

std::string serialize_header(const std::vector<TensorInfo>& ordered, const Metadata& metadata,
                             const std::string& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const TensorInfo& t : ordered) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {t.begin, t.end}}};
  }
  std::string text;
  try {
    text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception& e) {
    throw Error(
        msg(path, ": cannot write header: a tensor name or metadata entry is not valid UTF-8"));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    throw Error(msg(path, ": header would be ", text.size(), " bytes, over the ", kMaxHeaderBytes,
                    "-byte limit readers enforce; shard the checkpoint"));
  }
  return text;
}

}  // namespace recast::io
