#pragma once

// Slots: the layers of a model that a recast may swap. A family builds every
// swappable layer (a dense projection, a convolution, an attention core)
// through one Slots object, under the checkpoint's own module name. Slots
// asks the registered recasts whose config block ("recast_t2r",
// "recast_tcnn", "recast_factorized", ...) the config carries whether they
// claim the slot; the one that does builds the layer, none builds the
// family's dense default, two is an error. It records what it built, so a
// recipe walks slots instead of per-family tables, and after the model is
// built it checks that every layer a block names found its slot.
//
// A new recast needs no edit of any family: it claims slots by their kind,
// name, role and shape. Where a family offers an attention slot before the
// projections that feed it (the ViT), a recast may claim those by the
// attention's Source names (Refiner's shared maps do).

#include "recast/layers/attention_core.h"

#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/any.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace recast::models {

enum class SlotKind { Linear, Conv2d, Attention };
const char* slot_kind_name(SlotKind kind);

struct Slot {
  SlotKind kind = SlotKind::Linear;
  std::string name;  // the checkpoint's module name: "transformer.h.3.attn.c_attn"
  // What the layer is for, where a recast cares: "block" (a ResNet block's
  // convolution), "" otherwise.
  std::string role;
  // Linear: in -> out. transposed: the dense weight is stored [in, out]
  // (transformers' Conv1D) rather than [out, in].
  int64_t in = 0, out = 0;
  bool bias = false, transposed = false;
  // Conv2d (square kernel, zero padding, groups 1).
  int64_t kernel = 1, stride = 1, padding = 0;
  // Attention.
  layers::AttentionSpec attention;
  // Attention: the dense projections that feed it, for per-head views of
  // its weights (Frobenius decay on W_Q W_K^T, W_V W_O): the slot names of the
  // query, key and value projections with the first output row each takes
  // (a fused qkv projection names itself three times), and the output one.
  struct Source {
    std::string slot;
    int64_t row = 0;
  };
  Source query, key, value;
  std::string output;
  // Attention: the family can host a token mixer that takes the attention's
  // input (AttentionCoreImpl::mixes_input: it then builds no q, k, v
  // projections); `in` is then the attention's input width, `out` the
  // output projection's input width, `bias` whether its projections have one.
  bool mixable = false;
};

// The dense weight and bias a family initialises a layer with, in the
// [out, in(, kh, kw)] layout (what a recast's layer that stands in the slot
// starts from when a model is trained from scratch).
struct DenseInit {
  at::Tensor weight, bias;
};
using DenseInitFn = std::function<DenseInit(const Slot& slot)>;

// What one recast's config block makes of the slots (see recasts/recast.h).
class SlotFiller {
 public:
  virtual ~SlotFiller() = default;
  virtual bool claims(const Slot& slot) const = 0;
  // Linear / Conv2d slots.
  virtual torch::nn::AnyModule build(const Slot& slot) const;
  // Attention slots.
  virtual std::shared_ptr<layers::AttentionCoreImpl> build_attention(const Slot& slot) const;
  // Whether the core it builds for this claimed attention slot takes the
  // attention's input rather than q, k, v.
  virtual bool mixes_input(const Slot& /*slot*/) const { return false; }
  // Fresh parameters for a layer it built (pretraining from scratch), from
  // the family's dense init of the layer it stands for.
  virtual void init(const Slot& slot, torch::nn::Module& layer, const DenseInitFn& dense) const = 0;
  // Throws unless every layer the block names was claimed.
  virtual void check_placed(const std::vector<const Slot*>& claimed,
                            const std::vector<Slot>& offered) const = 0;
};

struct BuiltSlot {
  Slot slot;
  std::string recast;  // the config key of the recast that built it; "" = the family's default
  std::shared_ptr<torch::nn::Module> module;
  // Tensor-name prefixes the layer owns ("NAME." for a layer, the core's
  // children under the attention module for a core).
  std::vector<std::string> prefixes;
};

class Slots {
 public:
  // Parses every recast_* block of `config` through its recast.
  explicit Slots(const nlohmann::json& config);

  // Registers on `parent` under `local`, and returns, the layer for a Linear
  // or Conv2d slot: the claiming recast's, else `dense()`.
  torch::nn::AnyModule layer(torch::nn::Module& parent, const std::string& local, Slot slot,
                             const std::function<torch::nn::AnyModule()>& dense);
  // The same, for the caller to register (a Sequential's push_back).
  torch::nn::AnyModule build(Slot slot, const std::function<torch::nn::AnyModule()>& dense);
  // The core of an attention slot (softmax unless a recast claims it); its
  // children are registered on `parent`.
  std::shared_ptr<layers::AttentionCoreImpl> attention(torch::nn::Module& parent, Slot slot);
  // Whether the core attention(slot) will build takes the attention's input
  // (the family then builds no q, k, v projections), asked before the
  // family builds them.
  bool mixes_input(Slot slot) const;

  // After the family has built everything: every block's layers were placed.
  void finish();

  const std::vector<BuiltSlot>& built() const { return built_; }
  // Whether `tensor` belongs to a layer a recast built.
  bool recast_owned(const std::string& tensor) const;
  // Fresh parameters for every layer a recast built (see SlotFiller::init).
  void init_recast_layers(const DenseInitFn& dense) const;

 private:
  const SlotFiller* claimant(const Slot& slot, std::string* key) const;
  std::vector<std::pair<std::string, std::shared_ptr<SlotFiller>>> fillers_;  // config key -> filler
  std::vector<BuiltSlot> built_;
};

}  // namespace recast::models
