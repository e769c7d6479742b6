// recast pretrain --arch NAME [--set key=value]... --data SPEC --out DIR --steps N ...
// recast finetune --model DIR --data SPEC --out DIR --steps N ...
// Both end with OUT holding a checkpoint directory every verb accepts
// (config.json, model.safetensors, the tokenizer, recast_manifest.json).

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/version.h"
#include "recast/io/checkpoint.h"
#include "recast/io/file.h"
#include "recast/io/json_strict.h"
#include "recast/train/checkpoint.h"

#include <torch/torch.h>

#include <cstdlib>
#include <ctime>
#include <functional>
#include <filesystem>
#include <set>
#include <thread>

namespace fs = std::filesystem;

namespace recast::cli {

void add_train_options(CLI::App* cmd, TrainCli& o) {
  cmd->add_option("--data", o.data,
                  "sotu, moby-dick, spam-assassin, fashion-mnist, or a path: text file / "
                  "directory / glob, .json/.jsonl with a text field, labelled .jsonl, image folder")
      ->required();
  cmd->add_option("--out", o.out, "Directory for the final model, checkpoints/ and metrics.jsonl")
      ->required();
  cmd->add_option("--steps", o.steps, "Optimizer steps (default 1000)")->check(integer_in(1, 1e12));
  cmd->add_option("--batch-size", o.batch_size,
                  "Examples per micro-batch, per rank in a data-parallel run (default 16)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--grad-accum", o.grad_accum, "Micro-batches per optimizer step (default 1)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--seq-len", o.seq_len,
                  "Tokens per language-model window / text truncation (default 128)")
      ->check(integer_in(1, 1 << 24));
  cmd->add_option("--image-size", o.image_size,
                  "Images: resize to N x N in the loader (bilinear); recorded in the run's manifest, so "
                  "eval, convert and analyze give the model the same size (default: as stored)")
      ->check(integer_in(1, 16384));
  cmd->add_option("--crop-pad", o.crop_pad,
                  "Images, training: random crop of the image padded by N pixels of zeros (default 0: off)")
      ->check(integer_in(0, 4096));
  cmd->add_flag("--hflip", o.hflip, "Images, training: random horizontal flip");
  cmd->add_flag("--channels-last", o.channels_last,
                "Images: 4-D weights and batches in channels-last (NHWC) memory, the layout fast GPU "
                "convolutions want (same results up to rounding)");
  cmd->add_option("--lr", o.lr, "Peak learning rate (default 3e-4)")->check(number_in(0, 1e30, true));
  cmd->add_option("--min-lr-ratio", o.min_lr_ratio, "Cosine floor as a fraction of --lr (0.1)")
      ->check(number_in(0, 1));
  cmd->add_option("--warmup", o.warmup, "Linear warmup steps (default min(100, steps/10))")
      ->check(integer_in(0, 1e12));
  cmd->add_option("--weight-decay", o.weight_decay,
                  "AdamW weight decay on matrices; none on biases, norms, embeddings (0.1)")
      ->check(number_in(0, 100));
  cmd->add_option("--clip", o.clip, "Clip the gradient norm to this (default 1; 0 = off)")
      ->check(number_in(0, 1e12));
  cmd->add_option("--train", o.train_regex,
                  "Train only parameters whose names match this regex; freeze the rest");
  cmd->add_option("--save-every", o.save_every,
                  "Checkpoint every N steps (default 0: at the end and on SIGINT/SIGTERM)")
      ->check(integer_in(0, 1e12));
  cmd->add_option("--keep", o.keep, "Checkpoints to keep (default 2, at least 2)")
      ->check(integer_in(2, 1e6));
  cmd->add_option("--eval-every", o.eval_every, "Evaluate on the val split every N steps")
      ->check(integer_in(0, 1e12));
  cmd->add_option("--eval-batches", o.eval_batches, "Batches per evaluation (default 20)")
      ->check(integer_in(1, 1e12));
  cmd->add_option("--log-every", o.log_every, "Steps per metrics.jsonl line (default 10)")
      ->check(integer_in(1, 1e12));
  cmd->add_option("--seed", o.seed, "Seed for new weights and the data order (default 0)");
  cmd->add_option("--split-seed", o.split_seed,
                  "Seed of the train / val / test split (default: pretrain 0; finetune the "
                  "source model's, so its test split stays unseen)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--resume", o.resume, "Continue from the newest checkpoint in OUT/checkpoints");
  cmd->add_option("--dist-timeout", o.dist_timeout,
                  "Data-parallel runs (torchrun / recast launch): seconds a rank waits for the "
                  "others at the rendezvous and in each collective before failing (default 600)")
      ->check(number_in(0, 1e7, true));
  cmd->add_flag("--shard-optimizer", o.shard_optimizer,
                "Data-parallel runs: split AdamW's moments across the ranks (ZeRO-1)");
  cmd->add_option("--tokenizer", o.tokenizer,
                  "bytes, or a directory with vocab.json + merges.txt (GPT-2 BPE), spiece.model "
                  "or tokenizer.model (SentencePiece)");
  cmd->add_option("--text-field", o.text_field, "JSON field holding the text (default text)");
  cmd->add_option("--device", o.device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_flag("--bf16", o.bf16, "bf16 autocast on CUDA (fp32 weights and optimizer state)");
  cmd->add_flag("--tf32", o.tf32, "Let CUDA fp32 products use TF32");
  cmd->add_option("--threads", o.threads, "CPU threads (default: every core)")
      ->check(integer_in(0, 4096));
  CLI::Option* teacher =
      cmd->add_option("--teacher", o.teacher, "Distil from this model's logits (checkpoint dir)");
  // Without a teacher there is no distillation for these to shape.
  cmd->add_option("--distill-alpha", o.distill_alpha,
                  "Weight of the distillation loss against the task loss (0.5)")
      ->check(number_in(0, 1))
      ->needs(teacher);
  cmd->add_option("--temperature", o.temperature, "Distillation temperature (default 2)")
      ->check(number_in(0, 1000, true))
      ->needs(teacher);
  cmd->add_flag("--no-progress", o.no_progress, "No progress bar (metrics.jsonl still written)");
  for (const auto& [name, item] : recasts::registry().items()) {
    const auto specs = item.factory->train_options();
    if (!specs.empty()) add_option_specs(cmd, specs, o.recast_values[name]);
  }
}

CLI::Option* add_option_spec(CLI::App* app, const recasts::OptionSpec& s,
                             std::function<void(const nlohmann::json&)> store) {
  using T = recasts::OptionSpec::Type;
  switch (s.type) {
    case T::Int:
      return app->add_option_function<int64_t>(
                    s.flag, [store](const int64_t& v) { store(v); }, s.help)
          ->check(integer_in(s.min, s.max));
    case T::Double:
      return app->add_option_function<double>(
                    s.flag, [store](const double& v) { store(v); }, s.help)
          ->check(number_in(s.min, s.max, s.open_min));
    case T::String:
      return app->add_option_function<std::string>(
          s.flag, [store](const std::string& v) { store(v); }, s.help);
    case T::Flag: {
      const nlohmann::json value = s.flag_value;
      return app->add_flag_callback(s.flag, [store, value] { store(value); }, s.help);
    }
  }
  throw Error(msg("option ", s.flag, ": unknown type"));
}

std::vector<CLI::Option*> add_option_specs(CLI::App* app, const std::vector<recasts::OptionSpec>& specs,
                                           nlohmann::json& values) {
  std::vector<CLI::Option*> out;
  nlohmann::json* target = &values;
  for (const auto& s : specs) {
    const std::string key = s.key;
    out.push_back(add_option_spec(app, s, [target, key](const nlohmann::json& v) { (*target)[key] = v; }));
  }
  return out;
}

void add_recast_hooks(models::Model& model, const TrainCli& o, train::TrainOptions& t) {
  for (const auto& [name, item] : recasts::registry().items()) {
    const auto specs = item.factory->train_options();
    auto given = o.recast_values.find(name);
    const nlohmann::json values = recasts::with_fallbacks(
        specs, given == o.recast_values.end() ? nlohmann::json::object() : given->second);
    for (const auto& [key, value] : values.items()) t.hook_options[key] = value;
    for (auto& hook : item.factory->train_hooks(model, values)) t.hooks.push_back(hook);
  }
}

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

std::unique_ptr<io::Tokenizer> tokenizer_from_option(const std::string& spec, bool sentinels) {
  if (spec.empty() || spec == "bytes") {
    if (!sentinels) return std::make_unique<io::ByteTokenizer>();
    // ByT5's layout in recast's byte tokenizer: bytes, </s>, then the
    // sentinels with <extra_id_0> on top (T5's id = vocab_size - 1 - N).
    std::vector<std::string> specials = {"</s>"};
    for (int n = 99; n >= 0; --n) specials.push_back(msg("<extra_id_", n, ">"));
    return std::make_unique<io::ByteTokenizer>(std::move(specials));
  }
  if (!io::is_directory(spec)) {
    throw UsageError(msg("--tokenizer ", quote(spec),
                         ": expected 'bytes' or a directory with vocab.json + merges.txt, "
                         "spiece.model or tokenizer.model"));
  }
  return io::load_tokenizer(spec);
}

std::unique_ptr<io::Tokenizer> tokenizer_of_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  if (!io::is_directory(dir)) return nullptr;
  bool any = false;
  for (const char* f : {"vocab.json", "tokenizer_config.json", "spiece.model", "tokenizer.model"}) {
    any = any || fs::exists(d / f);
  }
  return any ? io::load_tokenizer(dir) : nullptr;
}

train::Normalization normalization_of(const nlohmann::json& config) {
  train::Normalization n;
  auto cfg = config.find("pretrained_cfg");
  if (cfg == config.end() || !cfg->is_object()) return n;
  auto read = [&](const char* key, std::vector<double>& out) {
    auto it = cfg->find(key);
    if (it == cfg->end()) return;
    if (!it->is_array()) throw Error(msg("config.json: pretrained_cfg.", key, ": expected a list"));
    for (const auto& v : *it) {
      if (!v.is_number()) throw Error(msg("config.json: pretrained_cfg.", key, ": expected numbers"));
      out.push_back(v.get<double>());
    }
  };
  read("mean", n.mean);
  read("std", n.std);
  // A one-channel model (model_args.in_chans 1) whose pretrained_cfg keeps
  // an RGB normalisation (timm keeps ImageNet's): the mean of the three, as a
  // grey pixel is the mean of its channels. Every verb reads it this way.
  const auto args = config.find("model_args");
  const bool grey = args != config.end() && args->is_object() && args->contains("in_chans") &&
                    (*args)["in_chans"] == 1;
  if (grey && n.mean.size() == 3 && n.std.size() == 3) {
    n.mean = {(n.mean[0] + n.mean[1] + n.mean[2]) / 3};
    n.std = {(n.std[0] + n.std[1] + n.std[2]) / 3};
  }
  return n;
}

void record_normalization(nlohmann::json& config, const train::Normalization& norm) {
  config["pretrained_cfg"]["mean"] = norm.mean;
  config["pretrained_cfg"]["std"] = norm.std;
}

train::ImageTransform image_input_of(const nlohmann::json& config, const nlohmann::json& manifest) {
  train::ImageTransform t;
  if (auto it = manifest.find("image_size"); it != manifest.end() && it->is_number_integer() && it->get<int64_t>() > 0) {
    t.size = it->get<int64_t>();
  }
  auto channels = [](const nlohmann::json& j, const char* key) -> int64_t {
    if (!j.is_object()) return 0;
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() && it->get<int64_t>() > 0 ? it->get<int64_t>() : 0;
  };
  const auto args = config.find("model_args");
  if (args != config.end()) t.channels = channels(*args, "in_chans");
  if (t.channels == 0) t.channels = channels(config, "in_chans");
  if (t.channels == 0) t.channels = channels(config, "num_channels");
  return t;
}

nlohmann::json manifest_of(const std::string& dir) {
  const std::string path = (fs::path(dir) / "recast_manifest.json").string();
  if (!io::is_regular_file(path)) return nlohmann::json::object();
  return io::read_json_file(path);
}

int64_t manifest_int(const nlohmann::json& manifest, const char* key, int64_t fallback) {
  auto it = manifest.find(key);
  return it != manifest.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

uint64_t split_seed_of(const nlohmann::json& manifest) {
  return static_cast<uint64_t>(manifest_int(manifest, "split_seed", manifest_int(manifest, "seed", 0)));
}

const char* task_name(models::Task t) {
  switch (t) {
    case models::Task::CausalLM: return "a language model";
    case models::Task::ImageClassification: return "an image model";
    case models::Task::SequenceClassification: return "a text classifier";
    case models::Task::Seq2SeqLM: return "an encoder-decoder language model";
  }
  return "?";
}

models::Task task_of(train::DataKind kind) {
  switch (kind) {
    case train::DataKind::Text: return models::Task::CausalLM;
    case train::DataKind::TextClassification: return models::Task::SequenceClassification;
    case train::DataKind::ImageClassification: return models::Task::ImageClassification;
    case train::DataKind::TextPairs: return models::Task::Seq2SeqLM;
  }
  return models::Task::CausalLM;
}

void check_data_fits(models::Task task, const std::string& data, const std::string& who) {
  const train::DataKind kind = train::sniff_data_kind(data);
  if (task_of(kind) != task) {
    throw UsageError(msg("--data ", quote(data), " is ", train::data_kind_name(kind), " data, for ",
                         task_name(task_of(kind)), "; ", who, " is ", task_name(task), ""));
  }
}

namespace {

// The facts of a data set a model is fitted to.
models::DataFacts facts_of(train::DataKind kind, const io::Tokenizer* tok, const train::Dataset& data,
                           int64_t seq_len, bool seq2seq) {
  models::DataFacts f;
  f.task = kind == train::DataKind::ImageClassification ? models::Task::ImageClassification
           : seq2seq                                     ? models::Task::Seq2SeqLM
           : kind == train::DataKind::TextClassification ? models::Task::SequenceClassification
                                                         : models::Task::CausalLM;
  f.classes = data.classes();
  f.seq_len = seq_len;
  if (tok) f.vocab = tok->vocab_size(), f.eos = tok->eos_id();
  if (f.task == models::Task::ImageClassification) {
    const at::Tensor px = data.batch({0}).inputs.pixel_values;
    f.channels = px.size(1), f.height = px.size(2), f.width = px.size(3);
  }
  return f;
}


// Fills what the data decides (vocabulary, classes, channels, context; with
// head_only the task head's keys only) into a config unless --set gave it.
void fit_config_to_data(nlohmann::json& config, const std::string& arch, const models::DataFacts& facts,
                        const std::vector<std::string>& sets, bool head_only, const std::string& data) {
  const models::ModelFactory& factory = models::factory_of(arch);
  auto can = [&](const models::ModelFactory& f) {
    return std::find(f.tasks.begin(), f.tasks.end(), facts.task) != f.tasks.end();
  };
  if (!can(factory)) {
    std::string able;
    for (const auto& [name, item] : models::model_registry().items()) {
      if (can(item.factory)) able += (able.empty() ? "" : ", ") + name;
    }
    throw Error(msg("--data ", data, " needs ", task_name(facts.task), "; ", arch, " is not one (",
                    able.empty() ? std::string("none is") : able + " can be", ")"));
  }
  std::set<std::string> given;
  for (const auto& kv : sets) given.insert(kv.substr(0, kv.find('=')));
  for (const auto& [key, value] : factory.fit(facts, head_only)) {
    if (head_only || !given.count(key)) models::set_config_value(config, arch, key, value);
  }
}

// Head parameters a change of task or class count replaces.
bool is_head(const std::string& arch, const std::string& name) {
  for (const auto& prefix : models::factory_of(arch).heads) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

struct Prepared {
  std::unique_ptr<io::Tokenizer> tokenizer;
  std::unique_ptr<train::Dataset> train, val;
  train::Normalization norm;
  train::DataKind kind;
  int64_t image_size = 0;  // what the loader resizes images to (0: as stored)
};

Prepared prepare_data(const TrainCli& o, std::unique_ptr<io::Tokenizer> tok,
                      train::Normalization norm, train::ImageTransform image) {
  Prepared p;
  p.kind = train::sniff_data_kind(o.data);
  const bool spans = o.objective == "span-corruption";
  const bool text_to_text = o.objective == "text-to-text";
  if (p.kind != train::DataKind::ImageClassification) {
    p.tokenizer = tok ? std::move(tok) : tokenizer_from_option(o.tokenizer, spans);
  }
  p.norm = std::move(norm);
  RECAST_CHECK(o.split_seed >= 0, "prepare_data: the split seed is resolved by the verb");
  train::DataOptions d{o.data, "train", static_cast<uint64_t>(o.split_seed), o.seq_len, o.text_field};
  if (o.image_size > 0) image.size = o.image_size;
  image.crop_pad = o.crop_pad;
  image.hflip = o.hflip;
  image.seed = o.seed;
  if ((image.size > 0 || image.augments()) && p.kind != train::DataKind::ImageClassification) {
    throw UsageError(msg(o.image_size > 0 ? "--image-size" : o.crop_pad > 0 ? "--crop-pad" : "--hflip",
                         ": --data ", quote(o.data), " is ", train::data_kind_name(p.kind), " data, not images"));
  }
  d.image = image;
  p.image_size = image.size;
  if (spans) {
    if (p.kind != train::DataKind::Text) {
      throw UsageError(msg("--objective span-corruption: --data ", quote(o.data), " is ",
                           train::data_kind_name(p.kind), " data; span corruption takes plain text"));
    }
    d.span_corruption = true;
    d.noise_density = o.noise_density;
    d.mean_span = o.mean_span;
    d.decoder_start = o.decoder_start;
  }
  if (text_to_text) {
    d.text_to_text = true;
    d.decoder_start = o.decoder_start;
    d.pad = o.pad;
  } else if (p.kind == train::DataKind::TextPairs) {
    throw UsageError(msg("--data ", quote(o.data), " holds input / target pairs, for an encoder-decoder (t5)"));
  }
  p.train = train::open_dataset(d, p.tokenizer.get(), &p.norm);
  if (p.kind != train::DataKind::Text && p.train->classes().size() == 1) {
    log::warn("--data ", o.data, " has a single class (", quote(p.train->classes()[0]),
              "): every prediction is right, the loss goes to 0 and the model learns nothing");
  }
  d.split = "val";
  try {
    p.val = train::open_dataset(d, p.tokenizer.get(), &p.norm);
  } catch (const Error& e) {
    log::warn("no validation split: ", e.what());
  }
  return p;
}

// The normalisation, and the size when the loader resizes (timm's
// pretrained_cfg.input_size, [C, H, W]), written into the model's config.
void record_image_input(nlohmann::json& config, const Prepared& p) {
  record_normalization(config, p.norm);
  if (p.image_size > 0) {
    const at::Tensor px = p.train->batch({0}).inputs.pixel_values;
    config["pretrained_cfg"]["input_size"] = {px.size(1), px.size(2), px.size(3)};
  }
}

train::TrainOptions trainer_options(const TrainCli& o) {
  train::TrainOptions t;
  t.out = o.out;
  t.steps = o.steps;
  t.batch_size = o.batch_size;
  t.grad_accum = o.grad_accum;
  t.lr = o.lr;
  t.min_lr_ratio = o.min_lr_ratio;
  t.warmup = o.warmup;
  t.weight_decay = o.weight_decay;
  t.clip = o.clip;
  t.save_every = o.save_every;
  t.eval_every = o.eval_every;
  t.eval_batches = o.eval_batches;
  t.log_every = std::max<int64_t>(1, o.log_every);
  t.keep = o.keep;
  t.train_regex = o.train_regex;
  t.resume = o.resume;
  t.seed = o.seed;
  t.split_seed = static_cast<uint64_t>(o.split_seed);
  t.device = select_device(o.device);
  t.bf16 = o.bf16;
  t.progress = !o.no_progress;
  t.distill_alpha = o.distill_alpha;
  t.temperature = o.temperature;
  t.dist_timeout_s = o.dist_timeout;
  t.shard_optimizer = o.shard_optimizer;
  t.channels_last = o.channels_last;
  return t;
}

nlohmann::json base_manifest(const std::string& verb, const TrainCli& o, const Prepared& p) {
  std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json m = {{"made_by", msg("recast ", verb)},
                      {"created", when},
                      {"git_revision", RECAST_GIT_REVISION},
                      {"data", o.data},
                      {"data_kind", train::data_kind_name(p.kind)},
                      {"train_data", p.train->describe()},
                      {"seq_len", o.seq_len},
                      {"batch_size", o.batch_size},
                      {"grad_accum", o.grad_accum},
                      {"lr", o.lr},
                      {"seed", o.seed},
                      {"split_seed", o.split_seed},
                      {"train", o.train_regex.empty() ? ".*" : o.train_regex},
                      {"device", o.device},
                      {"bf16", o.bf16}};
  if (o.channels_last) m["channels_last"] = true;
  if (p.tokenizer) m["tokenizer"] = p.tokenizer->kind();
  if (!o.teacher.empty()) m["teacher"] = o.teacher;
  if (p.image_size > 0) m["image_size"] = p.image_size;
  if (o.crop_pad > 0 || o.hflip) m["augment"] = {{"crop_pad", o.crop_pad}, {"hflip", o.hflip}};
  return m;
}

// --out for the whole run: checked before any work, locked against a second
// writer, and removed again if this run created it and failed before its
// first checkpoint (nothing there worth keeping: metrics.jsonl at most).
// In a data-parallel run rank 0 alone writes --out, so it alone locks it.
int with_out_dir(const TrainCli& o, const std::function<int()>& body) {
  check_output_dir(o.out, "--out", /*must_be_empty=*/false);
  if (train::dist_env().rank != 0) return body();
  io::OutputLock lock(o.out, "--out");
  const bool existed = fs::exists(o.out);
  try {
    return body();
  } catch (...) {
    std::error_code ec;
    if (!existed && train::latest_checkpoint(o.out).empty()) fs::remove_all(o.out, ec);
    throw;
  }
}

int run_pretrain(TrainCli& o) {
  set_threads(o.threads);
  set_tf32(o.tf32);
  const auto& factory = models::factory_of(o.arch);
  if (o.split_seed < 0) o.split_seed = 0;
  const bool seq2seq = std::find(factory.tasks.begin(), factory.tasks.end(),
                                 models::Task::Seq2SeqLM) != factory.tasks.end();
  if (o.objective.empty()) o.objective = seq2seq ? "span-corruption" : "lm";
  if ((o.objective == "span-corruption") != seq2seq) {
    throw UsageError(msg("--objective ", o.objective, ": ", o.arch, " is ",
                         seq2seq ? "an encoder-decoder (span-corruption)"
                                 : "not an encoder-decoder (span-corruption needs one: t5, mt5)"));
  }
  // The channels the model takes: the data's, unless --set in_chans=3 asks
  // for RGB (a grey data set is then repeated).
  train::ImageTransform image;
  for (const auto& kv : o.set) {
    if (kv.rfind("in_chans=", 0) == 0) image.channels = std::atoll(kv.c_str() + 9);
  }
  Prepared p = prepare_data(o, nullptr, {}, image);
  nlohmann::json config = nlohmann::json::object();
  config[factory.style == models::ConfigStyle::Transformers ? "model_type" : "architecture"] = o.arch;
  fit_config_to_data(config, o.arch,
                     facts_of(p.kind, p.tokenizer.get(), *p.train, o.seq_len, seq2seq), o.set, false,
                     o.data);
  models::apply_overrides(config, o.arch, o.set);
  if (p.kind == train::DataKind::ImageClassification) record_image_input(config, p);
  at::manual_seed(o.seed);
  models::ModelPtr model = models::create_model(o.arch, config);
  model->init_weights();
  model->set_metadata({{"format", "pt"}});
  train::TrainOptions t = trainer_options(o);
  add_recast_hooks(*model, o, t);
  model->to(t.device);
  nlohmann::json manifest = base_manifest("pretrain", o, p);
  manifest["arch"] = o.arch;
  manifest["objective"] = o.objective;
  if (o.objective == "span-corruption") {
    manifest["noise_density"] = o.noise_density;
    manifest["mean_span"] = o.mean_span;
  }
  manifest["set"] = o.set;
  train::train(*model, *p.train, p.val.get(), t, {manifest, p.tokenizer.get()});
  return 0;  // also when stopped by a signal (checkpoint saved; --resume continues)
}

int run_finetune(TrainCli& o) {
  set_threads(o.threads);
  set_tf32(o.tf32);
  if (!io::is_directory(o.model)) {
    throw UsageError(msg("--model ", quote(o.model), ": expected a checkpoint directory"));
  }
  const std::string config_path = (fs::path(o.model) / io::kConfigName).string();
  if (!io::is_regular_file(config_path)) {
    throw Error(msg(o.model, ": no config.json in this directory"));
  }
  nlohmann::json config = io::read_json_file(config_path);
  const std::string arch = models::arch_from_config(config, config_path);
  const auto& tasks = models::factory_of(arch).tasks;
  const bool seq2seq = std::find(tasks.begin(), tasks.end(), models::Task::Seq2SeqLM) != tasks.end();
  if (seq2seq) {
    // Plain text continues span corruption (as the model was pretrained);
    // labelled text and input / target pairs train text to text.
    const train::DataKind kind = train::sniff_data_kind(o.data);
    if (kind == train::DataKind::ImageClassification) {
      throw UsageError(msg("--data ", quote(o.data), " is image data; ", o.model, " is an encoder-decoder"));
    }
    o.objective = kind == train::DataKind::Text ? "span-corruption" : "text-to-text";
    o.pad = models::cfg_int(config, "pad_token_id", 0);
    o.decoder_start = models::cfg_int(config, "decoder_start_token_id", o.pad);
    const nlohmann::json source = manifest_of(o.model);
    if (source.contains("noise_density") && source["noise_density"].is_number()) {
      o.noise_density = source["noise_density"];
    }
    if (source.contains("mean_span") && source["mean_span"].is_number()) o.mean_span = source["mean_span"];
  }
  std::unique_ptr<io::Tokenizer> tok =
      o.tokenizer.empty() ? tokenizer_of_checkpoint(o.model) : tokenizer_from_option(o.tokenizer);
  // The source model's split, whatever --seed says: a new split would put
  // its held-out texts into this run's training set.
  if (o.split_seed < 0) o.split_seed = static_cast<int64_t>(split_seed_of(manifest_of(o.model)));
  Prepared p = prepare_data(o, std::move(tok), normalization_of(config), image_input_of(config, manifest_of(o.model)));
  if (p.tokenizer) {
    const int64_t vocab = models::cfg_int(config, "vocab_size", 0);
    if (vocab > 0 && p.tokenizer->vocab_size() > vocab) {
      throw Error(msg("the tokenizer has ", p.tokenizer->vocab_size(), " ids but ", config_path,
                      " has vocab_size ", vocab, " (token ids >= vocab size would not embed)"));
    }
  }
  // A classifier head sized for this data (timm num_classes / GPT-2 score).
  fit_config_to_data(config, arch, facts_of(p.kind, p.tokenizer.get(), *p.train, o.seq_len, seq2seq), o.set,
                     true, o.data);
  if (p.kind == train::DataKind::ImageClassification) record_image_input(config, p);
  models::apply_overrides(config, arch, o.set);
  at::manual_seed(o.seed);
  models::ModelPtr model = models::create_model(arch, config);
  model->init_weights();
  const io::TensorStore store = io::TensorStore::open(o.model);
  const models::LoadReport report = models::load_weights(*model, store);
  std::vector<std::string> fresh;
  for (const auto* list : {&report.missing, &report.unexpected, &report.mismatched}) {
    for (const auto& entry : *list) {
      const std::string name = entry.substr(0, entry.find(':'));
      if (!is_head(arch, name)) {
        throw Error(msg(o.model, ": weights do not fit ", arch, ": ", report.describe()));
      }
      if (list != &report.unexpected) fresh.push_back(name);
    }
  }
  if (!fresh.empty()) {
    log::info("new head for ", p.train->classes().size(), " classes, initialised fresh: ",
              fresh.size() == 1 ? fresh[0] : msg(fresh[0], " and ", fresh.size() - 1, " more"));
  }
  model->set_metadata(store.metadata());
  train::TrainOptions t = trainer_options(o);
  add_recast_hooks(*model, o, t);
  model->to(t.device);
  if (!o.teacher.empty()) {
    t.teacher = models::load_model(o.teacher);
    if (seq2seq || t.teacher->task() == models::Task::Seq2SeqLM) {
      // Encoder-decoder from encoder-decoder: the same batches, the same vocabulary.
      if (t.teacher->task() != model->task()) {
        throw UsageError(msg("--teacher ", quote(o.teacher), " is ", task_name(t.teacher->task()),
                             "; --model ", o.model, " is ", task_name(model->task())));
      }
      const int64_t tv = models::cfg_int(t.teacher->config(), "vocab_size", 0);
      const int64_t sv = models::cfg_int(model->config(), "vocab_size", 0);
      if (tv != sv) {
        throw UsageError(msg("--teacher ", quote(o.teacher), ": vocab_size ", tv, ", the student's ", sv,
                             " (distillation compares their logits token by token)"));
      }
    } else {
      check_data_fits(t.teacher->task(), o.data, msg("--teacher ", quote(o.teacher)));
    }
    t.teacher->to(t.device);
  }
  nlohmann::json manifest = base_manifest("finetune", o, p);
  manifest["from"] = o.model;
  manifest["arch"] = arch;
  if (seq2seq) {
    manifest["objective"] = o.objective;
    if (o.objective == "span-corruption") {
      manifest["noise_density"] = o.noise_density;
      manifest["mean_span"] = o.mean_span;
    }
  }
  train::train(*model, *p.train, p.val.get(), t, {manifest, p.tokenizer.get()});
  return 0;  // also when stopped by a signal (checkpoint saved; --resume continues)
}

}  // namespace

Runner add_pretrain(CLI::App& app) {
  auto o = std::make_shared<TrainCli>();
  auto* cmd = app.add_subcommand("pretrain", verb_info("pretrain").summary);
  cmd->add_option("--arch", o->arch, "Architecture (see 'recast list')")->required();
  cmd->add_option("--set", o->set, "Config value key=value (JSON value); repeatable");
  cmd->add_option("--objective", o->objective,
                  "lm (decoders) or span-corruption (encoder-decoders: T5's objective; "
                  "--seq-len is the encoder's input length); default: the architecture's")
      ->check(CLI::IsMember({"lm", "span-corruption"}));
  cmd->add_option("--noise-density", o->noise_density,
                  "Span corruption: fraction of tokens dropped (default 0.15)")
      ->check(number_in(0, 1, true));
  cmd->add_option("--mean-span", o->mean_span, "Span corruption: mean span length (default 3)")
      ->check(number_in(1, 1e6));
  add_train_options(cmd, *o);
  return [o] { return with_out_dir(*o, [&] { return run_pretrain(*o); }); };
}

Runner add_finetune(CLI::App& app) {
  auto o = std::make_shared<TrainCli>();
  auto* cmd = app.add_subcommand("finetune", verb_info("finetune").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory to start from")->required();
  cmd->add_option("--set", o->set, "Override a config value key=value; repeatable");
  add_train_options(cmd, *o);
  o->lr = 1e-4;
  return [o] { return with_out_dir(*o, [&] { return run_finetune(*o); }); };
}

}  // namespace recast::cli
