#pragma once

// Models: module trees named exactly as the source checkpoint names its tensors
// (transformers, timm, torchvision), so loading is a shape-checked copy with a
// report of missing, unexpected and mis-shaped tensors, and saving writes the
// source layout back bit for bit.

#include "recast/core/registry.h"
#include "recast/io/checkpoint.h"
#include "recast/models/config.h"
#include "recast/models/slots.h"

#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

namespace recast::models {

enum class Task { CausalLM, ImageClassification, SequenceClassification, Seq2SeqLM };

// Inputs by the names transformers and timm use.
struct Batch {
  at::Tensor input_ids;       // int64 [B, T]
  at::Tensor attention_mask;  // [B, T], nonzero = real token (optional)
  at::Tensor pixel_values;    // float [B, C, H, W]
  // int64 [B, T], each token's position (optional; default: offset + 0..T-1).
  // As transformers' generate does for left-padded batches: the first real
  // token of every row is position 0.
  at::Tensor position_ids;
  // Encoder-decoder models: the decoder's tokens, int64 [B, T_dec]
  // (transformers' decoder_input_ids: the targets shifted right).
  at::Tensor decoder_input_ids;
  // Decoder language models: logits for the last N positions only (0: every
  // position), as transformers' logits_to_keep; a prefill that samples from
  // the last position needs 1 ([B, T, V] would be 103 GB at 32 x 32k in bf16).
  int64_t logits_to_keep = 0;
};

// Records intermediates whose stable names match a regex (`--dump`). Names are
// the module names of the checkpoint ("transformer.h.3", "layer4", "blocks.0").
class Recorder {
 public:
  explicit Recorder(const std::string& pattern);
  bool wants(const std::string& name) const { return std::regex_search(name, pattern_); }
  // Stores a float32 CPU copy when `name` matches.
  void record(const std::string& name, const at::Tensor& value);
  const io::NamedTensors& tensors() const { return tensors_; }

 private:
  std::regex pattern_;
  io::NamedTensors tensors_;
};

// What a decoder remembers between calls (layers/attention_core.h).
using KVCache = layers::KVCache;

class Model : public torch::nn::Module {
 public:
  // `config` is the checkpoint's config.json (or one built from --arch);
  // `arch` the registered architecture name.
  // Parses the config's recast_* blocks into the model's slots.
  Model(std::string arch, nlohmann::json config)
      : arch_(std::move(arch)), config_(std::move(config)), slots_(config_) {}

  const std::string& arch() const { return arch_; }
  const nlohmann::json& config() const { return config_; }
  // Where the weights live: the first parameter's device (CPU when none).
  c10::Device device() const;
  virtual Task task() const = 0;

  // Logits: [B, T, V] for language models, [B, classes] for classifiers.
  // Decoders extend `cache` when one is given.
  virtual at::Tensor forward(const Batch& batch, Recorder* recorder = nullptr,
                             KVCache* cache = nullptr) = 0;

  // A random batch of the shape the model expects (smoke tests, reports).
  virtual Batch example_batch(int64_t batch_size, uint64_t seed) const = 0;

  // Fresh weights as the reference implementation initialises them for
  // pretraining (GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2L);
  // ResNet: Kaiming fan-out; ViT: truncated N(0, 0.02)), drawn from LibTorch's
  // default generator (seed it first).
  virtual void init_weights() = 0;

  // Positions a sequence model takes (its context); 0 for other models.
  virtual int64_t context_length() const { return 0; }

  // The swappable layers the family built (models/slots.h): what recipes walk.
  Slots& slots() { return slots_; }
  const Slots& slots() const { return slots_; }

  // Checkpoint names that may be absent because they alias another tensor
  // (a tied lm_head); they are not saved either.
  virtual std::vector<std::string> tied_names() const { return {}; }
  // Checkpoint tensors that carry no weights (old transformers' attention-mask
  // buffers, cached RoPE frequencies): skipped on load, not reported.
  virtual bool ignorable(const std::string& /*name*/) const { return false; }

  // The weights file's __metadata__, written back on save (bit-exact round trip).
  const io::Metadata& metadata() const { return metadata_; }
  void set_metadata(io::Metadata metadata) { metadata_ = std::move(metadata); }

 private:
  std::string arch_;
  nlohmann::json config_;
  io::Metadata metadata_;
  Slots slots_;
};

using ModelPtr = std::shared_ptr<Model>;

// What a data set says about the model that fits it (recast pretrain / finetune).
struct DataFacts {
  Task task = Task::CausalLM;
  int64_t vocab = 0, eos = -1, seq_len = 0;  // text
  std::vector<std::string> classes;          // classifiers
  int64_t channels = 0, height = 0, width = 0;  // images
};

// One registration per family: how to build it, its declared config, and the
// facts the CLI asks instead of testing family names.
struct ModelFactory {
  ConfigStyle style = ConfigStyle::Transformers;
  std::function<ModelPtr(const nlohmann::json& config)> make;
  ConfigSpec spec;              // the config keys it reads or accepts
  std::vector<Task> tasks;      // what it can be trained for
  // Config values that fit it to a data set: every size the data decides
  // (pretrain), or with head_only only the task head's (finetune).
  std::function<std::vector<std::pair<std::string, nlohmann::json>>(const DataFacts&, bool head_only)> fit;
  std::vector<std::string> heads;  // module-name prefixes of its task heads ("lm_head.", "fc.")
  nlohmann::json tiny;             // a config small enough for smoke tests
};

// Registered architectures ("gpt2", "llama", "resnet50", "vit_tiny_patch16_224", ...).
Registry<ModelFactory>& model_registry();
const ModelFactory& factory_of(const std::string& arch);
// Registers a family at start-up: RECAST_REGISTER_MODEL(gpt2) { r.add(...); }
struct ModelRegistration {
  explicit ModelRegistration(void (*add)(Registry<ModelFactory>&)) { add(model_registry()); }
};
#define RECAST_REGISTER_MODEL(name)                                        \
  static void register_##name(::recast::Registry<::recast::models::ModelFactory>& r); \
  static const ::recast::models::ModelRegistration model_registration_##name(&register_##name); \
  static void register_##name(::recast::Registry<::recast::models::ModelFactory>& r)

// Which registered architecture a config.json describes: transformers'
// model_type, or timm's architecture.
std::string arch_from_config(const nlohmann::json& config, const std::string& source);

struct LoadReport {
  std::vector<std::string> missing;     // expected, absent
  std::vector<std::string> unexpected;  // present, unknown
  std::vector<std::string> mismatched;  // "name: expected [..] found [..]" (shape or dtype)
  uint64_t adopted_bytes = 0, copied_bytes = 0;  // weights used in place / copied (converted)
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string describe(size_t max_names = 8) const;
};

// Copies the store's tensors into the model (floating-point ones converted
// to the parameter's dtype; other dtype mismatches are reported unless
// `allow_cast`); never throws for name problems, reports them. With `adopt`,
// a tensor whose dtype and device already match (the CPU, the checkpoint's
// dtype) is not copied: the parameter takes the memory-mapped file's pages
// (copy-on-write, private to the process), so loading costs no second copy.
LoadReport load_weights(Model& model, const io::TensorStore& store, bool allow_cast = false,
                        bool adopt = false);

struct LoadOptions {
  std::string arch;              // required for a bare .safetensors file
  std::vector<std::string> set;  // "key=value" config overrides (JSON values)
  bool strict = true;            // missing / unexpected / mis-shaped tensors are errors
  // The dtype of the floating-point parameters and buffers (built in it, so
  // a bf16 checkpoint loaded as bf16 is never widened); unset: fp32.
  std::optional<c10::ScalarType> dtype;
};

// LibTorch's default dtype for a scope: a family built inside it allocates
// (and initialises) its floating-point tensors in `dtype` (unset: unchanged).
class ScopedDefaultDtype {
 public:
  explicit ScopedDefaultDtype(std::optional<c10::ScalarType> dtype);
  ~ScopedDefaultDtype();
  ScopedDefaultDtype(const ScopedDefaultDtype&) = delete;
  ScopedDefaultDtype& operator=(const ScopedDefaultDtype&) = delete;

 private:
  caffe2::TypeMeta before_;
};

// Loads a checkpoint directory (config.json + weights) or a bare .safetensors
// file with options.arch. Errors name the file and each offending tensor.
ModelPtr load_model(const std::string& path, const LoadOptions& options = {});

// Config edits the way the family lays its config out (timm: model_args).
void set_config_value(nlohmann::json& config, const std::string& arch, const std::string& key,
                      const nlohmann::json& value);
bool has_config_value(const nlohmann::json& config, const std::string& arch,
                      const std::string& key);
// "key=value" strings (--set); the value is JSON when it parses, else a string.
void apply_overrides(nlohmann::json& config, const std::string& arch,
                     const std::vector<std::string>& sets);

// Builds a model with random weights (smoke tests, benchmarks): the config is
// validated against the family's declaration before anything is allocated,
// and the slots' recast blocks are checked once the model is built.
ModelPtr create_model(const std::string& arch,
                      const nlohmann::json& config = nlohmann::json::object());

// The checkpoint tensors in the source layout, tied aliases left out.
io::NamedTensors state_dict_for_save(const Model& model);
// config.json + model.safetensors (sharded above max_shard_bytes), atomically.
void save_model(const Model& model, const std::string& dir,
                uint64_t max_shard_bytes = 5'000'000'000ULL);

// Config helpers shared by the families: a value, or a default, with the type
// checked and the key named on error.
int64_t cfg_int(const nlohmann::json& c, const char* key, std::optional<int64_t> fallback = {});
double cfg_double(const nlohmann::json& c, const char* key, std::optional<double> fallback = {});
bool cfg_bool(const nlohmann::json& c, const char* key, std::optional<bool> fallback = {});
std::string cfg_string(const nlohmann::json& c, const char* key,
                       std::optional<std::string> fallback = {});

}  // namespace recast::models
