// libFuzzer target: arbitrary bytes as a whole safetensors file. The parser must
// either throw recast::Error or return a header whose every tensor lies inside
// the data area, with byte counts that match the shapes; any crash, sanitizer
// report or leak is a bug. Run with `make fuzz`.

#include "recast/core/error.h"
#include "recast/io/safetensors_header.h"
#include "recast/io/sniff.h"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)recast::io::sniff_format(data, size);
  try {
    recast::io::Header h = recast::io::parse_header(data, size, "fuzz");
    if (h.data_offset + h.data_bytes != size) std::abort();
    uint64_t covered = 0;
    for (const auto& t : h.tensors) {
      if (t.end < t.begin || t.end > h.data_bytes) std::abort();
      auto bytes = recast::io::byte_size(t.dtype, t.shape);
      if (!bytes || *bytes != t.nbytes()) std::abort();
      covered += t.nbytes();
      if (h.find(t.name) != &t) std::abort();
    }
    if (covered != h.data_bytes) std::abort();
  } catch (const recast::Error&) {
  }
  return 0;
}
