#include "recast/train/checkpoint.h"

#include "recast/core/error.h"
#include "recast/core/version.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace recast::train {
namespace {

at::Tensor generator_state(c10::Device device) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_generator_state(c10::Device device, const at::Tensor& state) {
  auto gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

int64_t step_of(const std::string& name) {
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return -1;
  for (size_t i = 5; i < name.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  }
  return std::stoll(name.substr(5));
}

}  // namespace

std::string step_name(int64_t step) {
  std::ostringstream os;
  os << "step-" << std::setw(8) << std::setfill('0') << step;
  return os.str();
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step >= 0 && fs::exists(e.path() / "trainer_state.json")) out.emplace_back(step, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string latest_checkpoint(const std::string& out) {
  auto all = list_checkpoints((fs::path(out) / "checkpoints").string());
  return all.empty() ? "" : all.back().second;
}

void remove_stale_temporaries(const std::string& ckpt_dir) {
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return;
  for (const auto& e : fs::directory_iterator(ckpt_dir)) {
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
  }
}

void save_checkpoint(const std::string& ckpt, const models::Model& model,
                     const io::NamedTensors& optimizer_state, const Loader& loader, int64_t step,
                     const nlohmann::json& fp, c10::Device device, int keep, int world_size) {
  const fs::path ckpt_dir(ckpt);
  fs::create_directories(ckpt_dir);
  const fs::path final_dir = ckpt_dir / step_name(step);
  const fs::path tmp = ckpt_dir / msg(".tmp-", step_name(step), "-", ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  models::save_model(model, tmp.string());
  io::NamedTensors state = optimizer_state;
  state.emplace_back("rng/cpu", generator_state(c10::kCPU));
  if (device.is_cuda()) state.emplace_back("rng/cuda", generator_state(device));
  io::save_safetensors((tmp / "optimizer.safetensors").string(), state, {{"format", "recast"}});
  const nlohmann::json trainer_state = {{"step", step},
                                        {"loader", loader.state()},
                                        {"options", fp},
                                        {"world_size", world_size},
                                        {"recast_version", RECAST_VERSION}};
  io::write_file_atomic((tmp / "trainer_state.json").string(), trainer_state.dump(2) + "\n");
  io::sync_directory(tmp.string());
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  io::sync_directory(ckpt_dir.string());
  auto all = list_checkpoints(ckpt_dir.string());
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i].second);
}

CheckpointState load_checkpoint(const std::string& dir_name, models::Model& model, AdamW& opt,
                                c10::Device device, const nlohmann::json& fp) {
  const fs::path dir(dir_name);
  const std::string state_path = (dir / "trainer_state.json").string();
  const nlohmann::json ts = io::read_json_file(state_path);
  CheckpointState s;
  try {
    s.step = ts.at("step").get<int64_t>();
    s.loader = ts.at("loader");
    s.world_size = ts.value("world_size", 1);
    const nlohmann::json& saved = ts.at("options");
    for (const auto& [key, value] : fp.items()) {
      if (!saved.contains(key) || saved[key] != value) {
        throw Error(msg("--resume: the checkpoint was made with ", key, " = ",
                        saved.contains(key) ? saved[key].dump() : "(absent)", ", this run has ",
                        value.dump(), "; resume with the same options or use another --out"));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(msg(state_path, ": ", e.what()));
  }
  const io::TensorStore weights = io::TensorStore::open(dir.string());
  const models::LoadReport report = models::load_weights(model, weights);
  if (!report.ok()) throw Error(msg(dir.string(), ": weights do not fit: ", report.describe()));
  const io::TensorStore optim = io::TensorStore::open((dir / "optimizer.safetensors").string());
  io::NamedTensors tensors = optim.load_all(/*copy=*/true);
  io::NamedTensors opt_state;
  for (auto& [name, t] : tensors) {
    if (name == "rng/cpu") {
      set_generator_state(c10::kCPU, t);
    } else if (name == "rng/cuda") {
      if (device.is_cuda()) set_generator_state(device, t);
    } else {
      opt_state.emplace_back(name, t.to(device));
    }
  }
  try {
    opt.load_state(opt_state);
  } catch (const Error& e) {
    throw e.with_context((dir / "optimizer.safetensors").string());
  }
  return s;
}

}  // namespace recast::train
