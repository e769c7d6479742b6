#include "recast/train/trainer.h"

#include "recast/core/signals.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/progress.h"
#include "recast/core/version.h"
#include "recast/io/file.h"
#include "recast/train/autocast.h"
#include "recast/train/checkpoint.h"
#include "recast/train/metrics.h"
#include "recast/train/optim.h"
#include "recast/train/reducer.h"

#include <torch/torch.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <numeric>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace recast::train {
namespace {

std::string format_number(double v) {
  std::ostringstream os;
  os << std::setprecision(4) << v;
  return os.str();
}

// Options whose change would make a resumed run differ from an uninterrupted
// one (the hooks' options under their own keys).
// batch_size is the global batch (ranks x --batch-size): a run resumes on
// another world size when the global batch stays (docs/training.md).
nlohmann::json fingerprint(const TrainOptions& o, const Dataset& data, int world_size) {
  nlohmann::json fp = {{"batch_size", o.batch_size * world_size}, {"grad_accum", o.grad_accum}, {"lr", o.lr},
                       {"min_lr_ratio", o.min_lr_ratio}, {"warmup", o.warmup},
                       {"weight_decay", o.weight_decay}, {"beta1", o.beta1}, {"beta2", o.beta2},
                       {"eps", o.eps}, {"clip", o.clip}, {"train", o.train_regex},
                       {"seed", o.seed}, {"split_seed", o.split_seed}, {"data", data.describe()},
                       {"distill", o.teacher != nullptr}};
  for (const auto& [key, value] : o.hook_options.items()) fp[key] = value;
  return fp;
}

// One optimizer step's numbers, read with one host sync.
struct StepStats {
  double loss = 0, grad_norm = 0;
  std::vector<std::pair<std::string, double>> penalties;  // hook name -> unweighted value
  int64_t tokens = 0;
  bool stop = false;  // some rank was asked to stop (SIGINT / SIGTERM)
};

class Trainer {
 public:
  Trainer(models::Model& model, const Dataset& train_data, const Dataset* val_data,
          const TrainOptions& o, const TrainRun& run)
      : model_(model), train_(train_data), val_(val_data), o_(o), run_(run) {}

  TrainResult run();

 private:
  void check_options();
  void select_parameters();
  void create_optimizer();
  void restore();
  // `signals`: read once the gradients are in (a signal during the step
  // stops after it); null inside another verb.
  StepStats step(double lr, const signals::StopScope* signals);
  void broadcast_buffers();
  void write_metrics(const nlohmann::json& line);
  void broadcast_model();
  void log_window(const StepStats& s, double lr);
  void evaluate();
  void log_statistics();
  void save();
  void finish();

  models::Model& model_;
  const Dataset& train_;
  const Dataset* val_;
  TrainOptions o_;
  TrainRun run_;
  std::optional<Loader> loader_;  // over global batches: rank r takes rows r*B..(r+1)*B-1
  int rank_ = 0, world_ = 1;
  bool dp_ = false;  // a process group (even of one rank: NCCL through the launcher)
  std::unique_ptr<GradReducer> reducer_;
  fs::path ckpt_dir_;
  std::vector<std::pair<std::string, at::Tensor>> trainable_;
  std::vector<at::Tensor> trainable_params_;
  std::set<std::string> no_decay_;
  std::unique_ptr<AdamW> opt_;
  nlohmann::json fp_;
  std::unique_ptr<MetricsLog> metrics_;
  int64_t step_ = 0, stats_logged_at_ = -1;
  std::string last_saved_;
  TrainResult result_;
  // The window of steps since the last train line.
  std::chrono::steady_clock::time_point started_, window_start_;
  double window_loss_ = 0, last_throughput_ = 0;
  int64_t window_steps_ = 0, window_tokens_ = 0;
};

void Trainer::check_options() {
  if (o_.warmup < 0) o_.warmup = std::min<int64_t>(100, o_.steps / 10);
  RECAST_CHECK(o_.steps >= 1, "--steps: expected >= 1, found ", o_.steps);
  RECAST_CHECK(o_.grad_accum >= 1, "--grad-accum: expected >= 1, found ", o_.grad_accum);
  RECAST_CHECK(o_.keep >= 2, "--keep: expected >= 2, found ", o_.keep);
  RECAST_CHECK(o_.lr > 0, "--lr: expected > 0, found ", o_.lr);
  if (o_.bf16 && !o_.device.is_cuda()) {
    throw UsageError("--bf16: autocast is for CUDA; on the CPU train in fp32");
  }
  RECAST_CHECK(o_.dist_timeout_s > 0, "--dist-timeout: expected > 0 seconds, found ", o_.dist_timeout_s);
  if (!o_.comm) {
    o_.comm = make_communicator(dist_env(), o_.device,
                                std::chrono::milliseconds(static_cast<int64_t>(o_.dist_timeout_s * 1000)));
  }
  rank_ = o_.comm->rank();
  world_ = o_.comm->world_size();
  dp_ = o_.comm->backend() != "single";
  if (rank_ != 0) o_.progress = false;  // one progress bar: rank 0's
  loader_.emplace(train_.size(), o_.batch_size * world_, o_.seed, /*shuffle=*/true, /*drop_last=*/true);
  if (!o_.objective) {
    o_.objective = std::make_shared<TaskObjective>(model_.task(), o_.teacher.get(), o_.distill_alpha,
                                                   o_.temperature);
  }
  ckpt_dir_ = fs::path(o_.out) / "checkpoints";
}

// Which parameters train (--train), and which of them the hooks keep out of
// weight decay.
void Trainer::select_parameters() {
  std::optional<std::regex> pattern;
  if (!o_.train_regex.empty()) {
    try {
      pattern.emplace(o_.train_regex);
    } catch (const std::regex_error& e) {
      throw UsageError(msg("--train ", quote(o_.train_regex), ": not a valid regex (", e.what(), ")"));
    }
  }
  int64_t frozen = 0, trained = 0;
  std::string first_name;
  for (auto& item : model_.named_parameters(true)) {
    if (first_name.empty()) first_name = item.key();
    const bool on = !pattern || std::regex_search(item.key(), *pattern);
    if (o_.channels_last && item.value().dim() == 4) {
      item.value().set_data(item.value().data().contiguous(at::MemoryFormat::ChannelsLast));
    }
    item.value().set_requires_grad(on);
    if (on) {
      trainable_.emplace_back(item.key(), item.value());
      trainable_params_.push_back(item.value());
      trained += item.value().numel();
    } else {
      frozen += item.value().numel();
    }
  }
  if (trainable_.empty()) {
    throw UsageError(msg("--train ", quote(o_.train_regex), ": matches no parameter (names look like ",
                         quote(first_name), ")"));
  }
  std::set<std::string> names;
  for (const auto& t : trainable_) names.insert(t.first);
  for (const auto& hook : o_.hooks) {
    for (const auto& n : hook->setup(model_, names)) no_decay_.insert(n);
  }
  log::info(o_.label == "train" ? "training " : msg(o_.label, ": training "), model_.arch(), " on ",
            train_.describe());
  log::info("parameters: ", trained, " trained", frozen ? msg(", ", frozen, " frozen") : "", "; ",
            o_.steps, " steps of ", o_.batch_size * o_.grad_accum * world_, " examples",
            dp_ ? msg(" (", world_, " ranks x ", o_.batch_size, ", ", o_.comm->backend(), ")") : "",
            ", lr ", o_.lr,
            " (warmup ", o_.warmup, ", cosine to ", o_.lr * o_.min_lr_ratio, "), ", o_.device.str(),
            o_.bf16 ? " bf16 autocast" : " fp32", o_.channels_last ? ", channels-last" : "");
}

void Trainer::create_optimizer() {
  opt_ = std::make_unique<AdamW>(default_param_groups(trainable_, o_.weight_decay, no_decay_),
                                 AdamW::Options{o_.beta1, o_.beta2, o_.eps});
  if (o_.shard_optimizer && dp_) {
    opt_->shard(o_.comm);
    log::info("--shard-optimizer: this rank holds ", opt_->state_numel(), " of the AdamW moments' ",
              2 * std::accumulate(trainable_params_.begin(), trainable_params_.end(), int64_t{0},
                                  [](int64_t n, const at::Tensor& p) { return n + p.numel(); }),
              " numbers");
  }
  if (dp_) {
    reducer_ = std::make_unique<GradReducer>(trainable_params_, o_.comm);
    log::debug("gradient reducer: ", reducer_->buckets(), " buckets of <= 25 MB");
  }
  fp_ = fingerprint(o_, train_, world_);
}

void Trainer::write_metrics(const nlohmann::json& line) {
  if (metrics_) metrics_->write(line);
}

// Buffers that each rank updates from its own rows (BatchNorm's running
// statistics) are rank 0's wherever they are read: evaluation and checkpoints.
void Trainer::broadcast_buffers() {
  if (!dp_) return;
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> buffers;
  for (auto& b : model_.buffers(true)) {
    if (b.is_floating_point()) buffers.push_back(b);
  }
  if (!buffers.empty()) o_.comm->broadcast(buffers, 0);
}

// Every rank starts from rank 0's weights and buffers.
void Trainer::broadcast_model() {
  if (!dp_) return;
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> all;
  for (auto& p : model_.parameters(true)) all.push_back(p);
  for (auto& b : model_.buffers(true)) all.push_back(b);
  o_.comm->broadcast(all, 0);
}

// Fresh start or resume; opens metrics.jsonl accordingly.
void Trainer::restore() {
  if (rank_ == 0 && fs::exists(ckpt_dir_)) remove_stale_temporaries(ckpt_dir_.string());
  std::string latest = latest_checkpoint(o_.out);
  if (dp_) {  // rank 0's choice, which every rank must see
    std::vector<at::Tensor> chosen = {at::full({1}, -1, at::kLong)};
    if (rank_ == 0 && !latest.empty()) chosen[0].fill_(list_checkpoints(ckpt_dir_.string()).back().first);
    o_.comm->broadcast(chosen, 0);
    const int64_t step = chosen[0].item<int64_t>();
    latest = step < 0 ? "" : (ckpt_dir_ / step_name(step)).string();
    if (!latest.empty() && !fs::exists(fs::path(latest) / "trainer_state.json")) {
      throw Error(msg("rank ", rank_, ": rank 0 resumes from ", latest, ", which this rank cannot "
                      "see; --out must be on a file system that every rank shares"));
    }
  }
  if (!latest.empty() && !o_.resume) {
    throw UsageError(msg(o_.out, " already holds checkpoints (latest ", latest,
                         "); pass --resume to continue, or choose another --out"));
  }
  if (!latest.empty()) {
    CheckpointState s = load_checkpoint(latest, model_, *opt_, o_.device, fp_);
    loader_->restore(s.loader);
    step_ = s.step;
    log::info("resumed from ", latest, " at step ", step_);
    if (s.world_size != world_) {
      log::warn("resuming a run made on ", s.world_size, " rank(s) on ", world_,
                ": the same global batch and data order, but not bit-exact (the gradients are "
                "summed in another order)");
    }
  } else if (o_.resume) {
    log::info("--resume: no checkpoint in ", ckpt_dir_.string(), " yet; starting at step 0");
  }
  last_saved_ = latest;
  broadcast_model();
  if (rank_ != 0) return;
  fs::create_directories(o_.out);
  metrics_ = std::make_unique<MetricsLog>((fs::path(o_.out) / "metrics.jsonl").string(), step_);
}

// The micro-batches, the hooks' penalties, clipping and the update.
StepStats Trainer::step(double lr, const signals::StopScope* signals) {
  at::Tensor loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(o_.device));
  StepStats s;
  for (int64_t micro = 0; micro < o_.grad_accum; ++micro) {
    std::vector<int64_t> rows = loader_->next();
    if (world_ > 1) {
      rows = std::vector<int64_t>(rows.begin() + rank_ * o_.batch_size,
                                  rows.begin() + (rank_ + 1) * o_.batch_size);
    }
    // The draw seeds the data's augmentation: restored with step_ on --resume.
    const Example ex = train_.training_batch(rows, static_cast<uint64_t>(step_ * o_.grad_accum + micro));
    Example dev = ex;
    dev.inputs = to_device(ex.inputs, o_.device, /*non_blocking=*/true);
    dev.labels = ex.labels.defined() ? ex.labels.to(o_.device, /*non_blocking=*/true) : ex.labels;
    if (o_.channels_last && dev.inputs.pixel_values.defined() && dev.inputs.pixel_values.dim() == 4) {
      dev.inputs.pixel_values = dev.inputs.pixel_values.contiguous(at::MemoryFormat::ChannelsLast);
    }
    at::Tensor loss;
    {
      AutocastGuard autocast(o_.bf16);
      loss = o_.objective->loss(model_, dev);
    }
    if (reducer_) reducer_->prepare(/*sync=*/micro == o_.grad_accum - 1);
    (loss / static_cast<double>(o_.grad_accum)).backward();
    loss_sum += loss.detach().to(at::kFloat);
    s.tokens += ex.tokens * world_;
  }
  // The averaged gradients, then (below) the penalties' on top, once, as alone.
  if (reducer_) {
    reducer_->finish();
    if (step_ == 0 || (step_ + 1) % (o_.log_every * 10) == 0) {
      log::debug("step ", step_ + 1, ": ", reducer_->launched_in_backward(), " of ", reducer_->buckets(),
                 " gradient buckets' all-reduce started during the backward");
    }
  }
  // Penalties, once per step, their gradients added to the loss's.
  at::Tensor mean_loss = loss_sum / static_cast<double>(o_.grad_accum);
  const bool stop_requested = signals != nullptr && signals->stop_requested();
  at::Tensor stop = at::full({}, stop_requested ? 1.0f : 0.0f, mean_loss.options());
  if (dp_) {  // the loss over every rank's rows, and whether any rank must stop
    std::vector<at::Tensor> agree = {at::stack({mean_loss, stop})};
    o_.comm->all_reduce_sum(agree);
    mean_loss = agree[0][0] / static_cast<double>(world_);
    stop = agree[0][1];
  }
  std::vector<at::Tensor> stats = {mean_loss, stop};
  std::vector<std::string> penalized;
  for (const auto& hook : o_.hooks) {
    at::Tensor p = hook->penalty();
    if (!p.defined()) continue;
    (p * hook->penalty_weight()).backward();
    stats.push_back(p.detach().to(loss_sum.device(), at::kFloat));
    penalized.push_back(hook->name());
  }
  stats.insert(stats.begin() + 1, clip_grad_norm(trainable_params_, o_.clip).to(loss_sum.device()));
  // One host sync per step, checked before the optimizer may apply a
  // non-finite update.
  const at::Tensor host = at::stack(stats).to(at::kCPU, at::kDouble).contiguous();
  const double* v = host.data_ptr<double>();
  s.loss = v[0], s.grad_norm = v[1], s.stop = v[2] > 0;
  for (size_t i = 0; i < penalized.size(); ++i) s.penalties.emplace_back(penalized[i], v[3 + i]);
  if (!std::isfinite(s.loss) || !std::isfinite(s.grad_norm)) {
    write_metrics({{"step", step_ + 1}, {"split", "train"}, {"loss", s.loss},
                     {"grad_norm", s.grad_norm}, {"error", "non-finite"}});
    throw Error(msg("step ", step_ + 1, ": ", std::isfinite(s.loss) ? "gradient norm" : "loss",
                    " is ", std::isfinite(s.loss) ? s.grad_norm : s.loss,
                    "; stopped before the optimizer step (last good checkpoint: ",
                    last_saved_.empty() ? "none" : last_saved_, ")"));
  }
  opt_->step(lr);
  if (reducer_) {
    reducer_->release();
  } else {
    for (auto& p : trainable_params_) p.mutable_grad() = at::Tensor();
  }
  return s;
}

void Trainer::log_window(const StepStats& s, double lr) {
  using Clock = std::chrono::steady_clock;
  window_loss_ += s.loss;
  window_tokens_ += s.tokens;
  ++window_steps_;
  // The rate so far in this window: the progress bar shows it every step, so
  // a run shorter than --log-every does not read 0.
  const auto now = Clock::now();
  const double window_s = std::chrono::duration<double>(now - window_start_).count();
  last_throughput_ = window_s > 0 ? static_cast<double>(window_tokens_) / window_s : 0.0;
  if (step_ % o_.log_every != 0 && step_ != o_.steps) return;
  const bool lm = (model_.task() == models::Task::CausalLM || model_.task() == models::Task::Seq2SeqLM);
  nlohmann::json line = {{"step", step_},
                         {"split", "train"},
                         {"loss", window_loss_ / static_cast<double>(window_steps_)},
                         {"lr", lr},
                         {"grad_norm", s.grad_norm},
                         {lm ? "tokens_per_s" : "examples_per_s", last_throughput_},
                         {"elapsed_s", std::chrono::duration<double>(now - started_).count()}};
  // Each penalty at this step as its hook computed it, before its weight.
  for (const auto& [name, value] : s.penalties) line[name] = value;
  write_metrics(line);
  window_loss_ = 0, window_steps_ = 0, window_tokens_ = 0, window_start_ = Clock::now();
}

void Trainer::evaluate() {
  if (!val_) return;
  broadcast_buffers();
  EvalOptions eo;
  eo.batch_size = o_.batch_size * world_;  // the batches one process of the global batch takes
  eo.max_batches = o_.eval_batches;
  eo.device = o_.device;
  eo.bf16 = o_.bf16;
  eo.comm = o_.comm;  // each rank takes every world_-th batch; the sums are reduced
  EvalResult r = train::evaluate(model_, *val_, eo);
  nlohmann::json j = {{"step", step_}, {"split", "eval"}, {"loss", r.loss}};
  if (r.classes.empty()) {
    j["perplexity"] = r.perplexity;
    j["bits_per_byte"] = r.bits_per_byte;
  } else {
    j["accuracy"] = r.accuracy;
  }
  write_metrics(j);
  log::info("step ", step_, ": eval loss ", format_number(r.loss),
            r.classes.empty() ? msg(", perplexity ", format_number(r.perplexity))
                              : msg(", accuracy ", format_number(r.accuracy)));
  result_.eval = r;
}

// The hooks' statistics on the first 8 validation (else training) examples,
// at most once per step.
void Trainer::log_statistics() {
  if (o_.hooks.empty() || stats_logged_at_ == step_) return;
  stats_logged_at_ = step_;
  const Dataset& d = val_ ? *val_ : train_;
  std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(8, d.size())));
  std::iota(idx.begin(), idx.end(), 0);
  const models::Batch probe = to_device(d.batch(idx).inputs, o_.device);
  for (const auto& hook : o_.hooks) {
    nlohmann::json stats = hook->statistics(model_, probe);
    if (stats.is_null()) continue;
    nlohmann::json line = {{"step", step_}, {"split", hook->name()}, {"epoch", loader_->epoch()}};
    for (const auto& [key, value] : stats.items()) line[key] = value;
    write_metrics(line);
  }
}

// Every rank takes part (a sharded optimizer's state is gathered); rank 0 writes.
void Trainer::save() {
  broadcast_buffers();
  // A sharded state is gathered by every rank; otherwise rank 0's is the state.
  io::NamedTensors state;
  if (rank_ == 0 || opt_->sharded()) state = opt_->state();
  if (rank_ == 0) {
    save_checkpoint(ckpt_dir_.string(), model_, state, *loader_, step_, fp_, o_.device, o_.keep,
                    world_);
  }
  last_saved_ = (ckpt_dir_ / step_name(step_)).string();
}

// The final model: what every other verb reads.
void Trainer::finish() {
  if (rank_ != 0) return;
  if (!o_.save_final) {
    log::info(o_.label, ": ", step_, " steps (final train loss ", format_number(result_.last_loss), ")");
    return;
  }
  models::save_model(model_, o_.out);
  if (run_.tokenizer) run_.tokenizer->save(o_.out);
  nlohmann::json manifest = run_.manifest;
  manifest["recast_version"] = RECAST_VERSION;
  manifest["steps"] = step_;
  manifest["final_train_loss"] = result_.last_loss;
  if (result_.eval) manifest["final_eval"] = result_.eval->to_json();
  io::write_file_atomic((fs::path(o_.out) / "recast_manifest.json").string(), manifest.dump(2) + "\n");
  log::info("wrote ", o_.out, " (final train loss ", format_number(result_.last_loss), ")");
}

TrainResult Trainer::run() {
  check_options();
  select_parameters();
  create_optimizer();
  restore();
  if (o_.teacher) o_.teacher->eval();
  std::optional<signals::StopScope> signals;
  if (o_.stop_on_signal) signals.emplace();
  ProgressBar::Options bar_options;
  bar_options.label = o_.label;
  bar_options.unit = "step";
  if (!o_.progress) bar_options.tty = 0, bar_options.plain_interval = 1e9;
  if (rank_ != 0) bar_options.stream = nullptr;  // one bar per job: rank 0's
  ProgressBar bar(o_.steps, bar_options);
  bar.set_position(step_);
  result_.step = step_;
  model_.train();
  const char* throughput_name = (model_.task() == models::Task::CausalLM || model_.task() == models::Task::Seq2SeqLM) ? "tok/s" : "ex/s";
  started_ = window_start_ = std::chrono::steady_clock::now();
  while (step_ < o_.steps) {
    const double lr = cosine_lr(step_, o_.steps, o_.warmup, o_.lr, o_.min_lr_ratio);
    StepStats s;
    try {
      s = step(lr, signals ? &*signals : nullptr);
    } catch (...) {
      bar.finish();
      throw;
    }
    ++step_;
    result_.step = step_;
    result_.last_loss = s.loss;
    log_window(s, lr);
    bar.update(1, {{"loss", s.loss}, {"lr", lr}, {throughput_name, last_throughput_}});
    // Alone, a signal that came after the step's read still stops here (as
    // before data parallelism); ranks go by the flag they agreed on.
    const bool stopping = s.stop || (!dp_ && signals && signals->stop_requested());
    if (o_.eval_every > 0 && step_ % o_.eval_every == 0 && step_ < o_.steps) {
      evaluate();
      log_statistics();
    }
    if (loader_->at_epoch_end()) log_statistics();
    if ((o_.save_every > 0 && step_ % o_.save_every == 0) || step_ == o_.steps || stopping) save();
    if (stopping && step_ < o_.steps) {
      bar.finish();
      log::warn("interrupted: stopped after step ", step_, "; checkpoint ", last_saved_,
                "; continue with --resume");
      result_.interrupted = true;
      return result_;
    }
  }
  bar.finish();
  evaluate();
  log_statistics();
  finish();
  return result_;
}

}  // namespace

TrainResult train(models::Model& model, const Dataset& train_data, const Dataset* val_data,
                  const TrainOptions& options, const TrainRun& run) {
  return Trainer(model, train_data, val_data, options, run).run();
}

}  // namespace recast::train
