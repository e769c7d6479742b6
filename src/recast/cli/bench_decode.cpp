// recast bench decode --model DIR --context N --new-tokens M [--batch B] [--json]
// The cost of generating after a prompt of N tokens: prefill once, then M
// decode steps (argmax), timed after a warm-up step, synchronising the device
// before each clock read. The KV cache is static (reserved for N + M + 2
// positions); on CUDA each step replays one CUDA graph (fixed shapes, argmax
// on the device; the warm-up and capture steps untimed) unless
// --no-cuda-graph; --no-static-cache measures the concatenating cache. On CUDA the peak memory of decoding and of the
// prefill are reported separately. Works for softmax (KV cache) and T2R (recurrent
// state) models alike; reports ms per token, the cache / state size, and on
// CUDA the peak memory. --profile FILE runs --new-tokens more steps under
// LibTorch's Kineto profiler, writes its Chrome trace to FILE and adds the
// device's kernels per token (count and time, the busiest first) to the
// report: where a step's time goes.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"
#include "recast/models/decode_steps.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace recast::cli {
namespace {

struct BenchDecodeCli {
  std::string model, device = "cpu", dtype = "f32";
  int64_t context = 1024, new_tokens = 32, batch = 1;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false;
  bool no_cuda_graph = false, no_static_cache = false;
  std::string profile;
};

// `steps` calls of `step` under the Kineto profiler; the trace goes to
// `path` (atomically) and the device work per step is summarised from it:
// GPU kernels, copies and sets on CUDA; on the CPU, the top-level operators.
nlohmann::json profile_steps(const std::function<void()>& step, int64_t steps, c10::Device device,
                             const std::string& path) {
  namespace prof = torch::autograd::profiler;
  namespace impl = torch::profiler::impl;
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(impl::ActivityType::CUDA);
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  const std::string tmp = io::temp_beside(path);
  bool enabled = false;
  try {
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    enabled = true;
    for (int64_t i = 0; i < steps; ++i) step();
    synchronize(device);
    enabled = false;
    prof::disableProfiler()->save(tmp);
  } catch (...) {
    if (enabled) prof::disableProfiler();
    std::filesystem::remove(tmp);
    try {
      throw;
    } catch (const c10::Error& e) {
      throw Error(msg("--profile: LibTorch's Kineto profiler failed: ", e.what_without_backtrace()));
    }
  }
  // LibTorch's own output, read leniently (Kineto's writer is not held to
  // the strict reader's no-duplicate-keys rule); unparsable: said, no file left.
  nlohmann::json trace;
  try {
    trace = nlohmann::json::parse(io::read_file_capped(tmp, size_t{1} << 30));
  } catch (const std::exception& e) {
    std::filesystem::remove(tmp);
    throw Error(msg("--profile: the profiler's trace could not be read (", e.what(), ")"));
  }
  std::filesystem::rename(tmp, path);
  // name -> (count, microseconds)
  std::map<std::string, std::pair<int64_t, double>> by_name;
  double busy_us = 0;
  int64_t events = 0;
  const auto list = trace.find("traceEvents");
  if (list != trace.end() && list->is_array()) {
    for (const auto& e : *list) {
      if (!e.is_object() || !e.contains("cat") || !e["cat"].is_string() || !e.contains("dur") ||
          !e["dur"].is_number()) continue;
      const std::string cat = e["cat"].get<std::string>();
      const bool device_work = cat == "kernel" || cat == "gpu_memcpy" || cat == "gpu_memset";
      if (device.is_cuda() ? !device_work : cat != "cpu_op") continue;
      const std::string name = e.value("name", std::string("?"));
      const double dur = e["dur"].get<double>();
      auto& [count, us] = by_name[name];
      ++count;
      us += dur;
      busy_us += dur;
      ++events;
    }
  }
  std::vector<std::pair<std::string, std::pair<int64_t, double>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  nlohmann::json top = nlohmann::json::array();
  const double n = static_cast<double>(steps);
  for (size_t i = 0; i < rows.size() && i < 25; ++i) {
    top.push_back({{"name", rows[i].first.substr(0, 160)},
                   {"per_token", static_cast<double>(rows[i].second.first) / n},
                   {"us_per_token", rows[i].second.second / n}});
  }
  return {{"trace", path},
          {"what", device.is_cuda() ? "device kernels, copies and sets" : "CPU operators (inclusive, nested)"},
          {"events_per_token", static_cast<double>(events) / n},
          {"busy_us_per_token", busy_us / n},
          {"top", top}};
}

double cache_mb(const models::KVCache& c) { return c.bytes() / (1024.0 * 1024.0); }

int run_bench_decode(const BenchDecodeCli& o) {
  set_threads(o.threads);
  const c10::Device device = select_device(o.device);
  const c10::ScalarType dtype = parse_dtype(o.dtype);
  check_compute_dtype(dtype, device);
  RECAST_CHECK(o.context >= 1 && o.new_tokens >= 1 && o.batch >= 1,
               "--context, --new-tokens and --batch must be >= 1");
  if (!o.profile.empty()) {
    const std::filesystem::path parent = std::filesystem::path(o.profile).parent_path();
    const std::string dir = parent.empty() ? "." : parent.string();
    if (!io::is_directory(dir)) {
      throw UsageError(msg("--profile ", quote(o.profile), ": its directory ", quote(dir), " does not exist"));
    }
    if (io::is_directory(o.profile)) {
      throw UsageError(msg("--profile ", quote(o.profile), ": is a directory; expected a file name"));
    }
  }
  models::ModelPtr model = models::load_model(o.model);
  if (model->task() != models::Task::CausalLM) {
    throw UsageError(msg("--model ", o.model, " is not a language model"));
  }
  const nlohmann::json& c = model->config();
  const int64_t vocab = models::cfg_int(c, "vocab_size");
  const int64_t positions = model->context_length();
  // Profiling runs --new-tokens more steps.
  const int64_t steps = o.profile.empty() ? o.new_tokens : 2 * o.new_tokens;
  if (o.context + steps + 2 > positions) {
    throw UsageError(msg("--context ", o.context, " + --new-tokens ", o.new_tokens, o.profile.empty() ? "" : " (twice: --profile)",
                         " exceeds the model's ", positions,
                         " positions (pretrain with a longer context for long prompts)"));
  }
  model->to(device, dtype);
  model->eval();
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(o.seed);
  models::Batch batch;
  batch.input_ids = at::randint(vocab, {o.batch, o.context}, gen, at::kLong).to(device);
  take_peak_allocated_mb(device);  // resets the peak
  using Clock = std::chrono::steady_clock;
  models::KVCache cache;
  // The static cache holds the prompt, the warm-up steps and the timed ones.
  if (!o.no_static_cache) cache.reserve(o.context + steps + 2);
  synchronize(device);
  auto t0 = Clock::now();
  // The prefill projects the last position only (logits_to_keep), so its
  // peak is not [B, context, V] logits and the decode peak below holds
  // weights + cache + one step's activations, what stays resident per sequence.
  batch.logits_to_keep = 1;
  at::Tensor last = model->forward(batch, nullptr, &cache).select(1, -1);
  synchronize(device);
  const double prefill_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const double prefill_peak_mb = take_peak_allocated_mb(device);
  // CUDA: fixed-shape steps replayed as one graph each (greedy, on the device).
  const bool graph = device.is_cuda() && !o.no_cuda_graph && !o.no_static_cache;
  std::unique_ptr<models::FixedSteps> fixed;
  at::Tensor next = last.argmax(-1, true);
  if (graph) {
    fixed = std::make_unique<models::FixedSteps>(*model, cache, o.batch, steps + 3,
                                                 models::SamplingOptions{0.0, 0, 1.0}, std::nullopt, true);
    fixed->start(last, {}, at::full({o.batch, 1}, o.context, at::kLong), 0);
  }
  last = at::Tensor();
  auto one_step = [&] {
    if (fixed) {
      fixed->step();
      return;
    }
    batch.input_ids = next;
    next = model->forward(batch, nullptr, &cache).select(1, -1).argmax(-1, true);
  };
  // Untimed steps: first-call allocations; with a graph, its warm-up and capture.
  for (int i = 0; i < (fixed ? 2 : 1); ++i) one_step();
  synchronize(device);
  t0 = Clock::now();
  for (int64_t i = 0; i < o.new_tokens; ++i) one_step();
  synchronize(device);
  const double decode_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const double peak_mb = take_peak_allocated_mb(device);
  nlohmann::json profile;
  if (!o.profile.empty()) profile = profile_steps(one_step, o.new_tokens, device, o.profile);
  // The recast whose core stands in the attention slots ("t2r"), else softmax.
  std::string attention = "softmax";
  for (const auto& b : model->slots().built()) {
    if (b.slot.kind != models::SlotKind::Attention || b.recast.empty()) continue;
    if (const auto* r = recasts::recast_for_config_key(b.recast)) attention = r->name();
  }
  nlohmann::json j = {{"model", o.model},
                      {"attention", attention},
                      {"device", device.str()},
                      {"dtype", dtype_flag_name(dtype)},
                      {"batch", o.batch},
                      {"context", o.context},
                      {"new_tokens", o.new_tokens},
                      {"prefill_ms", prefill_ms},
                      {"ms_per_token", decode_ms / static_cast<double>(o.new_tokens)},
                      {"tokens_per_s", static_cast<double>(o.new_tokens * o.batch) * 1000.0 / decode_ms},
                      {"cache_mb", cache_mb(cache)},
                      {"static_cache", !o.no_static_cache},
                      {"cuda_graph", fixed != nullptr && fixed->graphed()}};
  if (!profile.is_null()) j["profile"] = profile;
  if (device.is_cuda()) {
    j["peak_memory_mb"] = peak_mb;  // while decoding
    j["prefill_peak_memory_mb"] = prefill_peak_mb;
  }
  if (o.json) {
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("%s, %s%s, batch %lld, context %lld: prefill %.1f ms, decode %.3f ms/token "
                "(%.1f tokens/s), cache %.2f MB%s\n",
                attention.c_str(), device.str().c_str(), j["cuda_graph"].get<bool>() ? " (CUDA graph)" : "", static_cast<long long>(o.batch),
                static_cast<long long>(o.context), prefill_ms, j["ms_per_token"].get<double>(),
                j["tokens_per_s"].get<double>(), j["cache_mb"].get<double>(),
                device.is_cuda() ? msg(", peak ", static_cast<int64_t>(peak_mb), " MB").c_str() : "");
    if (!profile.is_null()) {
      std::printf("profile (%s): %.1f per token, %.1f us per token busy; trace %s\n",
                  profile["what"].get<std::string>().c_str(), profile["events_per_token"].get<double>(),
                  profile["busy_us_per_token"].get<double>(), o.profile.c_str());
      for (const auto& r : profile["top"]) {
        std::printf("  %8.1f us %6.1f x  %s\n", r["us_per_token"].get<double>(), r["per_token"].get<double>(),
                    r["name"].get<std::string>().c_str());
      }
    }
  }
  return 0;
}

}  // namespace

Runner add_bench(CLI::App& app) {
  auto o = std::make_shared<BenchDecodeCli>();
  auto* cmd = app.add_subcommand("bench", verb_info("bench").summary);
  cmd->require_subcommand(1);
  auto* decode = cmd->add_subcommand("decode", "Decode cost after a prefill of --context tokens");
  decode->add_option("--model", o->model, "Language model checkpoint directory")->required();
  decode->add_option("--context", o->context, "Prompt length before decoding (default 1024)")
      ->check(integer_in(1, 1e9));
  decode->add_option("--new-tokens", o->new_tokens, "Timed decode steps (default 32)")
      ->check(integer_in(1, 1e9));
  decode->add_option("--batch", o->batch, "Sequences decoded together (default 1)")
      ->check(integer_in(1, 1e6));
  decode->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  decode->add_option("--dtype", o->dtype, "Weights: f32, bf16 or f16 (default f32; states stay fp32)");
  decode->add_option("--seed", o->seed, "Seed of the random prompt (default 0)");
  decode->add_option("--threads", o->threads, "CPU threads (default: every core)")
      ->check(integer_in(0, 4096));
  decode->add_flag("--json", o->json, "Print one JSON object");
  decode->add_flag("--no-cuda-graph", o->no_cuda_graph,
                   "CUDA: step eagerly instead of replaying one CUDA graph per step");
  decode->add_flag("--no-static-cache", o->no_static_cache,
                   "Grow the KV cache by concatenation each step (the old path; implies --no-cuda-graph)");
  decode->add_option("--profile", o->profile,
                     "Profile --new-tokens more steps (LibTorch's Kineto): Chrome trace to this file, "
                     "kernels per token in the report");
  return [o] { return run_bench_decode(*o); };
}

}  // namespace recast::cli
