// recast repack IN OUT [--max-shard-size SIZE] [--dtype f32|bf16|f16]: rewrites a
// checkpoint's weights as safetensors in OUT (sharded when larger than SIZE),
// optionally casting floating-point tensors, and copies the checkpoint's other
// small files (config, tokenizer). Everything is validated on the way in and
// written atomically on the way out.

#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/io/checkpoint.h"
#include "recast/core/signals.h"
#include "recast/io/file.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

namespace fs = std::filesystem;

namespace recast::cli {
namespace {

struct RepackOptions {
  std::string input;
  std::string output;
  std::string max_shard_size = "5GB";
  std::string dtype;
};

bool is_weight_or_unsafe(const std::string& name) {
  for (const char* suffix : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                             ".pt", ".pth", ".ckpt", ".pkl"}) {
    if (ends_with(name, suffix)) return true;
  }
  return false;
}

// Copies config/tokenizer files (at most 64 MB each) next to the new weights.
void copy_side_files(const std::string& in_dir, const std::string& out_dir) {
  for (const auto& e : fs::directory_iterator(in_dir)) {
    std::string name = e.path().filename().string();
    if (!e.is_regular_file() || is_weight_or_unsafe(name) || name.front() == '.') continue;
    if (e.file_size() > (64u << 20)) {
      log::warn(e.path().string(), ": not copied (larger than 64 MB)");
      continue;
    }
    std::ifstream in(e.path(), std::ios::binary);
    std::ostringstream contents;
    contents << in.rdbuf();
    if (!in) throw Error(msg(e.path().string(), ": read error"));
    io::write_file_atomic((fs::path(out_dir) / name).string(), contents.str());
  }
}

int run_repack(const RepackOptions& o) {
  const uint64_t max_shard = io::parse_byte_size(o.max_shard_size);
  std::optional<c10::ScalarType> cast;
  if (!o.dtype.empty()) cast = parse_dtype(o.dtype);
  check_output_dir(o.output, "OUT", /*must_be_empty=*/false);
  io::OutputLock lock(o.output, "OUT");
  io::TensorStore store = io::TensorStore::open(o.input);
  // A new directory is removed whole if a signal stops the run (each file in
  // it is written atomically, but a half set of shards is no checkpoint).
  signals::TempPath unfinished;
  if (!fs::exists(o.output)) unfinished.reset(o.output);

  io::NamedTensors tensors;
  tensors.reserve(store.entries().size());
  uint64_t bytes = 0;
  for (const auto& e : store.entries()) {
    at::Tensor t = store.files()[e.file].tensor(*e.info);  // a view: nothing is read yet
    if (cast && t.is_floating_point() && t.scalar_type() != *cast) t = t.to(*cast);
    bytes += static_cast<uint64_t>(t.nbytes());
    tensors.emplace_back(e.info->name, t);
  }
  ProgressBar bar(static_cast<int64_t>(bytes), {"repack", "B"});
  io::save_weights(o.output, tensors,
                   store.metadata().empty() ? io::Metadata{{"format", "pt"}} : store.metadata(),
                   max_shard, [&bar](uint64_t n) { bar.update(static_cast<int64_t>(n)); });
  bar.finish();
  if (io::is_directory(o.input) &&
      fs::weakly_canonical(o.input) != fs::weakly_canonical(o.output)) {
    copy_side_files(o.input, o.output);
  }
  unfinished.release();
  log::info("wrote ", tensors.size(), " tensors to ", o.output);
  return 0;
}

}  // namespace

Runner add_repack(CLI::App& app) {
  auto o = std::make_shared<RepackOptions>();
  auto* cmd = app.add_subcommand("repack", verb_info("repack").summary);
  cmd->add_option("input", o->input, "A .safetensors file or a checkpoint directory")->required();
  cmd->add_option("output", o->output, "Output checkpoint directory")->required();
  cmd->add_option("--max-shard-size", o->max_shard_size,
                  "Largest shard, e.g. 500MB or 5GB (default 5GB)")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            try {
              io::parse_byte_size(text);
              return {};
            } catch (const UsageError& e) {
              return e.what();
            }
          },
          "SIZE"));
  cmd->add_option("--dtype", o->dtype, "Cast floating-point tensors to f32, bf16 or f16");
  return [o] { return run_repack(*o); };
}

}  // namespace recast::cli
