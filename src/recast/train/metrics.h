#pragma once

// OUT/metrics.jsonl: one JSON object per line (train windows, evaluations,
// hook statistics), flushed after each line. A resumed run first drops the
// lines written after the checkpoint it resumes from.

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace recast::train {

class MetricsLog {
 public:
  // Starts the file afresh (step 0) or keeps its lines up to `step`.
  MetricsLog(const std::string& path, int64_t step);
  void write(const nlohmann::json& line);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace recast::train
