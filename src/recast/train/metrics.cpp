#include "recast/train/metrics.h"

#include "recast/core/error.h"
#include "recast/io/file.h"

namespace recast::train {
namespace {

// Drops metrics lines past `step` (written after the checkpoint we resume from).
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() > step) {
      continue;
    }
    kept += line + "\n";
  }
  io::write_file_atomic(path, kept);
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, int64_t step) : path_(path) {
  if (step > 0) {
    truncate_metrics(path, step);
  } else {
    io::write_file_atomic(path, "");
  }
  out_.open(path, std::ios::app);
  if (!out_) throw Error(msg(path, ": cannot open for writing"));
}

void MetricsLog::write(const nlohmann::json& line) {
  out_ << line.dump() << "\n";
  out_.flush();
}

}  // namespace recast::train
