#pragma once

// What the training and evaluation verbs share: the options of pretrain and
// finetune, tokenizer and model resolution, and moving a model to its device.

#include "recast/io/tokenizer.h"
#include "recast/models/model.h"
#include "recast/recasts/recast.h"
#include "recast/train/data.h"
#include "recast/train/trainer.h"

#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace recast::cli {

struct TrainCli {
  std::string arch, model, data, out, tokenizer, device = "cpu", train_regex, teacher;
  std::string text_field = "text";
  std::vector<std::string> set;
  int64_t steps = 1000, batch_size = 16, seq_len = 128, grad_accum = 1, warmup = -1;
  int64_t save_every = 0, eval_every = 0, eval_batches = 20, log_every = 10;
  double lr = 3e-4, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  double distill_alpha = 0.5, temperature = 2.0;
  double dist_timeout = 600;    // seconds: rendezvous and each collective of a data-parallel run
  bool shard_optimizer = false;  // ZeRO-1
  // pretrain: "lm" (decoders) or "span-corruption" (encoder-decoders); "" =
  // the architecture's own.
  // finetune of an encoder-decoder: "span-corruption" (plain text) or
  // "text-to-text" (labelled text, input / target pairs), from the data.
  std::string objective;
  double noise_density = 0.15, mean_span = 3.0;
  int64_t decoder_start = 0, pad = 0;  // the encoder-decoder's (text-to-text batches)
  // The registered recasts' training options as given, by recast then key.
  std::map<std::string, nlohmann::json> recast_values;
  int keep = 2, threads = 0;
  uint64_t seed = 0;
  int64_t split_seed = -1;  // -1: pretrain 0, finetune the source model's
  bool resume = false, bf16 = false, tf32 = false, no_progress = false;
  // Images: resize in the loader (0: as stored); training augmentation.
  int64_t image_size = 0, crop_pad = 0;
  bool hflip = false, channels_last = false;
};

// Declares the options both verbs take (the registered recasts' training
// options included).
void add_train_options(CLI::App* cmd, TrainCli& o);

// Adds `spec` as an option of `app` that hands its value to `store`.
CLI::Option* add_option_spec(CLI::App* app, const recasts::OptionSpec& spec,
                             std::function<void(const nlohmann::json&)> store);
// Adds each spec as an option of `app` storing its value under spec.key in
// `values` (which must outlive the parse); returns the options.
std::vector<CLI::Option*> add_option_specs(CLI::App* app, const std::vector<recasts::OptionSpec>& specs,
                                           nlohmann::json& values);

// The recasts' training hooks for `model` and the values of all their
// training options (fallbacks for those not given), for the trainer.
void add_recast_hooks(models::Model& model, const TrainCli& o, train::TrainOptions& t);

// Sets LibTorch's intra-op threads: `threads`, or every core when 0 (LibTorch
// counts physical cores and finds one on these 2-vCPU machines).
void set_threads(int threads);

// "bytes" -> the byte tokenizer (with `sentinels`: </s> and T5's 100
// <extra_id_N> above the bytes, for span corruption); a directory -> its
// tokenizer files.
std::unique_ptr<io::Tokenizer> tokenizer_from_option(const std::string& spec, bool sentinels = false);
// The tokenizer saved with a checkpoint directory, or nullptr when it has none.
std::unique_ptr<io::Tokenizer> tokenizer_of_checkpoint(const std::string& dir);

// The image normalisation recorded in a model's config (pretrained_cfg).
train::Normalization normalization_of(const nlohmann::json& config);
void record_normalization(nlohmann::json& config, const train::Normalization& norm);

// How a model takes images (no augmentation): the size it was trained at
// (its run's manifest "image_size"; 0: as stored) and its input channels
// (config model_args.in_chans / in_chans / num_channels; 0: unknown, as
// stored), so a grey data set is repeated to RGB for a 3-channel model.
train::ImageTransform image_input_of(const nlohmann::json& config, const nlohmann::json& manifest);

// Refuses, before any work, data a model of `task` cannot take ("--data X is
// image data; --model DIR is a language model"); `who` names the model
// ("--model DIR", "--teacher DIR"). UsageError.
void check_data_fits(models::Task task, const std::string& data, const std::string& who);

// recast_manifest.json of a checkpoint directory (empty object when absent).
nlohmann::json manifest_of(const std::string& dir);

// Parses --seq-len style integers from a manifest with a fallback.
int64_t manifest_int(const nlohmann::json& manifest, const char* key, int64_t fallback);

// The seed of the train / val / test split a model was trained on: the
// manifest's split_seed; before that key existed, the run's seed was also the
// split's; 0 without a manifest (the default split).
uint64_t split_seed_of(const nlohmann::json& manifest);

}  // namespace recast::cli
