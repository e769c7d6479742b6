#include "recast/train/trainer.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/core/version.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"
#include "recast/layers/conv_attention.h"
#include "recast/layers/factorized.h"
#include "recast/train/autocast.h"
#include "recast/train/optim.h"

#include <torch/torch.h>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <numeric>
#include <regex>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace recast::train {
namespace {

// ---------------------------------------------------------------- signals

std::atomic<int> g_signals{0};

extern "C" void on_stop_signal(int sig) {
  if (g_signals.fetch_add(1) >= 1) {
    // Second signal: leave now. Checkpoints are renamed into place whole, so
    // the last one stays intact; a half-built temporary one is removed on the
    // next start.
    static const char text[] = "\nrecast: second signal, exiting without a checkpoint\n";
    ssize_t ignored = ::write(STDERR_FILENO, text, sizeof(text) - 1);
    (void)ignored;
    ::_exit(128 + sig);
  }
}

class SignalScope {
 public:
  SignalScope() {
    g_signals = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalScope() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  bool stop_requested() const { return g_signals.load() > 0; }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// ---------------------------------------------------------------- RNG state

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

// ---------------------------------------------------------------- checkpoints

std::string step_name(int64_t step) {
  std::ostringstream os;
  os << "step-" << std::setw(8) << std::setfill('0') << step;
  return os.str();
}

int64_t step_of(const std::string& name) {
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return -1;
  for (size_t i = 5; i < name.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return -1;
  }
  return std::stoll(name.substr(5));
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step >= 0 && fs::exists(e.path() / "trainer_state.json")) out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Options whose change would make a resumed run differ from an uninterrupted one.
nlohmann::json fingerprint(const TrainOptions& o, const Dataset& data) {
  return {{"batch_size", o.batch_size}, {"grad_accum", o.grad_accum}, {"lr", o.lr},
          {"min_lr_ratio", o.min_lr_ratio}, {"warmup", o.warmup}, {"weight_decay", o.weight_decay},
          {"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps}, {"clip", o.clip},
          {"train", o.train_regex}, {"seed", o.seed}, {"split_seed", o.split_seed},
          {"data", data.describe()},
          {"distill", o.teacher != nullptr}, {"frobenius_decay", o.frobenius_decay},
          {"fd_attention", o.fd_attention}};
}

struct State {
  int64_t step = 0;
  nlohmann::json loader;
};

void save_checkpoint(const fs::path& ckpt_dir, const models::Model& model, const AdamW& opt,
                     const Loader& loader, int64_t step, const nlohmann::json& fp,
                     c10::Device device, int keep) {
  fs::create_directories(ckpt_dir);
  const fs::path final_dir = ckpt_dir / step_name(step);
  const fs::path tmp = ckpt_dir / msg(".tmp-", step_name(step), "-", ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  models::save_model(model, tmp.string());
  io::NamedTensors state = opt.state();
  state.emplace_back("rng/cpu", generator_state(c10::kCPU));
  if (device.is_cuda()) state.emplace_back("rng/cuda", generator_state(device));
  io::save_safetensors((tmp / "optimizer.safetensors").string(), state, {{"format", "recast"}});
  const nlohmann::json trainer_state = {{"step", step},
                                        {"loader", loader.state()},
                                        {"options", fp},
                                        {"recast_version", RECAST_VERSION}};
  io::write_file_atomic((tmp / "trainer_state.json").string(), trainer_state.dump(2) + "\n");
  io::sync_directory(tmp.string());
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  io::sync_directory(ckpt_dir.string());
  auto all = list_checkpoints(ckpt_dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i].second);
}

void remove_stale_temporaries(const fs::path& ckpt_dir) {
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return;
  for (const auto& e : fs::directory_iterator(ckpt_dir)) {
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
  }
}

State load_checkpoint(const fs::path& dir, models::Model& model, AdamW& opt, c10::Device device,
                      const nlohmann::json& fp) {
  const std::string state_path = (dir / "trainer_state.json").string();
  const nlohmann::json ts = io::read_json_file(state_path);
  State s;
  try {
    s.step = ts.at("step").get<int64_t>();
    s.loader = ts.at("loader");
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

// Drops metrics lines past `step` (written after the checkpoint we resume from).
void truncate_metrics(const fs::path& path, int64_t step) {
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
  io::write_file_atomic(path.string(), kept);
}

std::string format_number(double v) {
  std::ostringstream os;
  os << std::setprecision(4) << v;
  return os.str();
}

}  // namespace

DistEnv dist_env() {
  auto int_var = [](const char* name, int fallback, int lo) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > 1'000'000) {
      throw UsageError(msg("environment ", name, "=", quote(v), ": expected an integer >= ", lo));
    }
    return static_cast<int>(x);
  };
  DistEnv e;
  e.world_size = int_var("WORLD_SIZE", 1, 1);
  e.rank = int_var("RANK", 0, 0);
  e.local_rank = int_var("LOCAL_RANK", 0, 0);
  if (e.rank >= e.world_size) {
    throw UsageError(msg("environment RANK=", e.rank, " is not below WORLD_SIZE=", e.world_size));
  }
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  if (const char* p = std::getenv("MASTER_PORT")) e.master_port = p;
  return e;
}

std::string latest_checkpoint(const std::string& out) {
  auto all = list_checkpoints(fs::path(out) / "checkpoints");
  return all.empty() ? "" : all.back().second.string();
}

TrainResult train(models::Model& model, const Dataset& train_data, const Dataset* val_data,
                  const TrainOptions& o_in, const TrainRun& run) {
  TrainOptions o = o_in;
  if (o.warmup < 0) o.warmup = std::min<int64_t>(100, o.steps / 10);
  RECAST_CHECK(o.steps >= 1, "--steps: expected >= 1, found ", o.steps);
  RECAST_CHECK(o.grad_accum >= 1, "--grad-accum: expected >= 1, found ", o.grad_accum);
  RECAST_CHECK(o.keep >= 2, "--keep: expected >= 2, found ", o.keep);
  RECAST_CHECK(o.lr > 0, "--lr: expected > 0, found ", o.lr);
  if (o.bf16 && !o.device.is_cuda()) {
    throw UsageError("--bf16: autocast is for CUDA; on the CPU train in fp32");
  }
  const DistEnv dist = dist_env();
  if (dist.world_size > 1) {
    throw UsageError(msg("WORLD_SIZE=", dist.world_size, " (rank ", dist.rank, ", master ",
                         dist.master_addr, ":", dist.master_port,
                         "): data-parallel training is not implemented yet; run one process"));
  }
  const fs::path out(o.out);
  const fs::path ckpt_dir = out / "checkpoints";

  // Which parameters train.
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  std::vector<at::Tensor> trainable_params;
  std::optional<std::regex> pattern;
  if (!o.train_regex.empty()) {
    try {
      pattern.emplace(o.train_regex);
    } catch (const std::regex_error& e) {
      throw UsageError(msg("--train ", quote(o.train_regex), ": not a valid regex (", e.what(), ")"));
    }
  }
  int64_t frozen = 0, trained = 0;
  std::string first_name;
  for (auto& item : model.named_parameters(true)) {
    if (first_name.empty()) first_name = item.key();
    const bool on = !pattern || std::regex_search(item.key(), *pattern);
    item.value().set_requires_grad(on);
    if (on) {
      trainable.emplace_back(item.key(), item.value());
      trainable_params.push_back(item.value());
      trained += item.value().numel();
    } else {
      frozen += item.value().numel();
    }
  }
  if (trainable.empty()) {
    throw UsageError(msg("--train ", quote(o.train_regex), ": matches no parameter (names look like ",
                         quote(first_name), ")"));
  }
  // Frobenius decay: the factor pairs (views, taken afresh each step), and
  // their parameters, which it replaces weight decay on.
  RECAST_CHECK(o.frobenius_decay >= 0, "--frobenius-decay: expected >= 0, found ", o.frobenius_decay);
  if (o.fd_attention && o.frobenius_decay == 0) {
    throw UsageError("--fd-attention: needs --frobenius-decay LAMBDA > 0");
  }
  if (o.fd_attention && model.attention_factors().empty()) {
    throw UsageError(msg("--fd-attention: ", model.arch(),
                         " has no dense multi-head attention to regularise (GPT-2 and Llama have; "
                         "factorized attention gets Frobenius decay on its own factors)"));
  }
  auto factor_pairs = [&] {
    std::vector<layers::FactorPair> pairs = layers::factorized_pairs(model);
    if (o.fd_attention) {
      for (auto& p : model.attention_factors()) pairs.push_back(std::move(p));
    }
    return pairs;
  };
  std::set<std::string> fd_params;
  if (o.frobenius_decay > 0) {
    std::set<std::string> trainable_names;
    for (const auto& t : trainable) trainable_names.insert(t.first);
    for (const auto& p : factor_pairs()) {
      for (const auto& name : p.params) {
        if (trainable_names.count(name)) fd_params.insert(name);
      }
    }
    if (fd_params.empty()) {
      throw UsageError(msg("--frobenius-decay: ", model.arch(), " has no trained factorized layers",
                           o.fd_attention ? " or dense attention" : "",
                           " (convert with --recipe factorize, or add --fd-attention)"));
    }
  }
  AdamW opt(default_param_groups(trainable, o.weight_decay, fd_params), {o.beta1, o.beta2, o.eps});
  Loader loader(train_data.size(), o.batch_size, o.seed, /*shuffle=*/true, /*drop_last=*/true);
  const nlohmann::json fp = fingerprint(o, train_data);

  // Fresh start or resume.
  int64_t step = 0;
  if (fs::exists(ckpt_dir)) remove_stale_temporaries(ckpt_dir);
  const std::string latest = latest_checkpoint(o.out);
  if (!latest.empty() && !o.resume) {
    throw UsageError(msg(o.out, " already holds checkpoints (latest ", latest,
                         "); pass --resume to continue, or choose another --out"));
  }
  if (!latest.empty()) {
    State s = load_checkpoint(latest, model, opt, o.device, fp);
    loader.restore(s.loader);
    step = s.step;
    log::info("resumed from ", latest, " at step ", step);
  } else if (o.resume) {
    log::info("--resume: no checkpoint in ", ckpt_dir.string(), " yet; starting at step 0");
  }
  fs::create_directories(out);
  const fs::path metrics_path = out / "metrics.jsonl";
  if (step > 0) {
    truncate_metrics(metrics_path, step);
  } else {
    io::write_file_atomic(metrics_path.string(), "");
  }
  std::ofstream metrics(metrics_path, std::ios::app);
  if (!metrics) throw Error(msg(metrics_path.string(), ": cannot open for writing"));
  auto log_metrics = [&](const nlohmann::json& j) {
    metrics << j.dump() << "\n";
    metrics.flush();
  };

  log::info("training ", model.arch(), " on ", train_data.describe());
  log::info("parameters: ", trained, " trained", frozen ? msg(", ", frozen, " frozen") : "",
            "; ", o.steps, " steps of ", o.batch_size * o.grad_accum, " examples, lr ", o.lr,
            " (warmup ", o.warmup, ", cosine to ", o.lr * o.min_lr_ratio, "), ",
            o.device.str(), o.bf16 ? " bf16 autocast" : " fp32");

  Objective objective{model.task(), o.teacher.get(), o.distill_alpha, o.temperature};
  if (o.teacher) o.teacher->eval();
  SignalScope signals;
  ProgressBar::Options bar_options;
  bar_options.label = "train";
  bar_options.unit = "step";
  if (!o.progress) bar_options.tty = 0, bar_options.plain_interval = 1e9;
  ProgressBar bar(o.steps, bar_options);
  bar.set_position(step);
  TrainResult result;
  result.step = step;
  std::string last_saved = latest;
  model.train();

  auto save = [&] {
    save_checkpoint(ckpt_dir, model, opt, loader, step, fp, o.device, o.keep);
    last_saved = (ckpt_dir / step_name(step)).string();
  };
  auto run_eval = [&] {
    if (!val_data) return;
    EvalOptions eo;
    eo.batch_size = o.batch_size;
    eo.max_batches = o.eval_batches;
    eo.device = o.device;
    eo.bf16 = o.bf16;
    EvalResult r = evaluate(model, *val_data, eo);
    nlohmann::json j = {{"step", step}, {"split", "eval"}, {"loss", r.loss}};
    if (r.classes.empty()) {
      j["perplexity"] = r.perplexity;
      j["bits_per_byte"] = r.bits_per_byte;
    } else {
      j["accuracy"] = r.accuracy;
    }
    log_metrics(j);
    log::info("step ", step, ": eval loss ", format_number(r.loss),
              r.classes.empty() ? msg(", perplexity ", format_number(r.perplexity))
                                : msg(", accuracy ", format_number(r.accuracy)));
    result.eval = r;
  };

  // T-CNN layers: gate values and mean attention distance per head, on the
  // first 8 validation (else training) examples, at every evaluation and at
  // every epoch's end ({"split": "tcnn"} lines; nothing for other models).
  int64_t tcnn_logged_at = -1;
  auto log_tcnn = [&] {
    if (model.task() != models::Task::ImageClassification || tcnn_logged_at == step) return;
    tcnn_logged_at = step;
    const Dataset& d = val_data ? *val_data : train_data;
    std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(8, d.size())));
    std::iota(idx.begin(), idx.end(), 0);
    const models::Batch in = to_device(d.batch(idx).inputs, o.device);
    const bool was_training = model.is_training();
    model.eval();  // BatchNorm statistics stay as they are
    const nlohmann::json stats = layers::conv_attention_stats(model, [&] { model.forward(in); });
    if (was_training) model.train();
    if (!stats.is_null()) {
      log_metrics({{"step", step}, {"split", "tcnn"}, {"epoch", loader.epoch()}, {"layers", stats}});
    }
  };

  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  auto window_start = started;
  double window_loss = 0, last_throughput = 0;
  const char* throughput_name = model.task() == models::Task::CausalLM ? "tok/s" : "ex/s";
  int64_t window_steps = 0, window_tokens = 0;
  while (step < o.steps) {
    const double lr = cosine_lr(step, o.steps, o.warmup, o.lr, o.min_lr_ratio);
    at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(o.device));
    int64_t tokens = 0;
    for (int64_t micro = 0; micro < o.grad_accum; ++micro) {
      const Example ex = train_data.batch(loader.next());
      Example dev = ex;
      dev.inputs = to_device(ex.inputs, o.device, /*non_blocking=*/true);
      dev.labels = ex.labels.to(o.device, /*non_blocking=*/true);
      at::Tensor loss;
      {
        AutocastGuard autocast(o.bf16);
        loss = objective(model.forward(dev.inputs), dev);
      }
      (loss / static_cast<double>(o.grad_accum)).backward();
      loss_sum += loss.detach().to(at::kFloat);
      tokens += ex.tokens;
    }
    // Frobenius decay, once per step: (lambda/2) sum ||U V^T||_F^2 in the
    // Gram form, its gradient added to the loss's.
    at::Tensor frobenius = at::zeros({}, loss_sum.options());
    if (o.frobenius_decay > 0) {
      for (const auto& p : factor_pairs()) {
        if (p.u.requires_grad() || p.v.requires_grad()) {
          frobenius = frobenius + layers::frobenius_penalty(p.u, p.v).to(at::kFloat);
        }
      }
      (frobenius * o.frobenius_decay).backward();
      frobenius = frobenius.detach();
    }
    const at::Tensor grad_norm = clip_grad_norm(trainable_params, o.clip);
    // One host sync per step: the loss, the gradient norm and the Frobenius
    // term, checked before the optimizer may apply a non-finite update.
    const at::Tensor stats = at::stack({loss_sum / static_cast<double>(o.grad_accum),
                                        grad_norm.to(loss_sum.device()), frobenius})
                                 .to(at::kCPU);
    const double loss_value = stats[0].item<double>(), norm_value = stats[1].item<double>();
    const double frobenius_value = stats[2].item<double>();
    if (!std::isfinite(loss_value) || !std::isfinite(norm_value)) {
      log_metrics({{"step", step + 1}, {"split", "train"}, {"loss", loss_value},
                   {"grad_norm", norm_value}, {"error", "non-finite"}});
      bar.finish();
      throw Error(msg("step ", step + 1, ": ", std::isfinite(loss_value) ? "gradient norm" : "loss",
                      " is ", std::isfinite(loss_value) ? norm_value : loss_value,
                      "; stopped before the optimizer step (last good checkpoint: ",
                      last_saved.empty() ? "none" : last_saved, ")"));
    }
    opt.step(lr);
    for (auto& p : trainable_params) p.mutable_grad() = at::Tensor();
    ++step;
    result.step = step;
    result.last_loss = loss_value;
    window_loss += loss_value;
    window_tokens += tokens;
    ++window_steps;
    const auto now = Clock::now();
    const double window_s = std::chrono::duration<double>(now - window_start).count();
    bar.update(1, {{"loss", loss_value}, {"lr", lr}, {throughput_name, last_throughput}});
    if (step % o.log_every == 0 || step == o.steps) {
      last_throughput = window_s > 0 ? static_cast<double>(window_tokens) / window_s : 0.0;
      nlohmann::json line = {
          {"step", step},
          {"split", "train"},
          {"loss", window_loss / static_cast<double>(window_steps)},
          {"lr", lr},
          {"grad_norm", norm_value},
          {model.task() == models::Task::CausalLM ? "tokens_per_s" : "examples_per_s",
           last_throughput},
          {"elapsed_s", std::chrono::duration<double>(now - started).count()}};
      // (1/2) sum ||U V^T||_F^2 at this step, before the lambda.
      if (o.frobenius_decay > 0) line["frobenius"] = frobenius_value;
      log_metrics(line);
      window_loss = 0, window_steps = 0, window_tokens = 0, window_start = Clock::now();
    }
    const bool stopping = signals.stop_requested();
    if (o.eval_every > 0 && step % o.eval_every == 0 && step < o.steps) {
      run_eval();
      log_tcnn();
    }
    if (loader.at_epoch_end()) log_tcnn();
    if ((o.save_every > 0 && step % o.save_every == 0) || step == o.steps || stopping) save();
    if (stopping && step < o.steps) {
      bar.finish();
      log::warn("interrupted: stopped after step ", step, "; checkpoint ", last_saved,
                "; continue with --resume");
      result.interrupted = true;
      return result;
    }
  }
  bar.finish();
  run_eval();
  log_tcnn();

  // The final model: what every other verb reads.
  models::save_model(model, o.out);
  if (run.tokenizer) run.tokenizer->save(o.out);
  nlohmann::json manifest = run.manifest;
  manifest["recast_version"] = RECAST_VERSION;
  manifest["steps"] = step;
  manifest["final_train_loss"] = result.last_loss;
  if (result.eval) manifest["final_eval"] = result.eval->to_json();
  io::write_file_atomic((out / "recast_manifest.json").string(), manifest.dump(2) + "\n");
  log::info("wrote ", o.out, " (final train loss ", format_number(result.last_loss), ")");
  return result;
}

}  // namespace recast::train
