#include "recast/models/slots.h"

#include "recast/core/error.h"
#include "recast/recasts/recast.h"

#include <torch/torch.h>

namespace recast::models {

const char* slot_kind_name(SlotKind kind) {
  switch (kind) {
    case SlotKind::Linear: return "linear";
    case SlotKind::Conv2d: return "conv2d";
    case SlotKind::Attention: return "attention";
  }
  return "?";
}

torch::nn::AnyModule SlotFiller::build(const Slot& slot) const {
  throw Error(msg("slot ", quote(slot.name), ": this recast builds no ", slot_kind_name(slot.kind),
                  " layer"));
}

std::shared_ptr<layers::AttentionCoreImpl> SlotFiller::build_attention(const Slot& slot) const {
  throw Error(msg("slot ", quote(slot.name), ": this recast builds no attention core"));
}

Slots::Slots(const nlohmann::json& config) {
  if (!config.is_object()) return;
  for (const auto& [key, block] : config.items()) {
    if (key.rfind("recast_", 0) != 0) continue;
    const recasts::Recast* recast = recasts::recast_for_config_key(key);
    if (recast == nullptr) {
      std::vector<std::string> known;
      for (const auto& [name, item] : recasts::registry().items()) {
        if (!item.factory->config_key().empty()) known.push_back(item.factory->config_key());
      }
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw Error(msg("config key '", key, "': no recast reads this block (known: ", list, ")"));
    }
    fillers_.emplace_back(key, recast->parse_block(block));
  }
}

const SlotFiller* Slots::claimant(const Slot& slot, std::string* key) const {
  const SlotFiller* found = nullptr;
  for (const auto& [k, filler] : fillers_) {
    if (!filler->claims(slot)) continue;
    if (found != nullptr) {
      throw Error(msg("config: ", quote(slot.name), " is both ", *key, " and ", k));
    }
    found = filler.get();
    *key = k;
  }
  return found;
}

torch::nn::AnyModule Slots::build(Slot slot, const std::function<torch::nn::AnyModule()>& dense) {
  std::string key;
  const SlotFiller* filler = claimant(slot, &key);
  torch::nn::AnyModule m = filler ? filler->build(slot) : dense();
  built_.push_back({std::move(slot), key, m.ptr(), {}});
  built_.back().prefixes.push_back(built_.back().slot.name + ".");
  return m;
}

torch::nn::AnyModule Slots::layer(torch::nn::Module& parent, const std::string& local, Slot slot,
                                  const std::function<torch::nn::AnyModule()>& dense) {
  torch::nn::AnyModule m = build(std::move(slot), dense);
  parent.register_module(local, m.ptr());
  return m;
}

std::shared_ptr<layers::AttentionCoreImpl> Slots::attention(torch::nn::Module& parent, Slot slot) {
  slot.kind = SlotKind::Attention;
  std::string key;
  const SlotFiller* filler = claimant(slot, &key);
  std::shared_ptr<layers::AttentionCoreImpl> core =
      filler ? filler->build_attention(slot)
             : std::make_shared<layers::SoftmaxAttentionImpl>(slot.attention);
  RECAST_CHECK(core->mixes_input() == (filler != nullptr && filler->mixes_input(slot)),
               "slot ", quote(slot.name), ": the core's input disagrees with its recast's claim");
  BuiltSlot b{std::move(slot), key, core, {}};
  for (const auto& child : core->named_children()) {
    parent.register_module(child.key(), child.value());
    b.prefixes.push_back(b.slot.name + "." + child.key() + ".");
  }
  built_.push_back(std::move(b));
  return core;
}

bool Slots::mixes_input(Slot slot) const {
  slot.kind = SlotKind::Attention;
  std::string key;
  const SlotFiller* filler = claimant(slot, &key);
  return filler != nullptr && filler->mixes_input(slot);
}

void Slots::finish() {
  std::vector<Slot> offered;
  for (const auto& b : built_) offered.push_back(b.slot);
  for (const auto& [key, filler] : fillers_) {
    std::vector<const Slot*> claimed;
    for (const auto& b : built_) {
      if (b.recast == key) claimed.push_back(&b.slot);
    }
    filler->check_placed(claimed, offered);
  }
}

bool Slots::recast_owned(const std::string& tensor) const {
  for (const auto& b : built_) {
    if (b.recast.empty()) continue;
    for (const auto& p : b.prefixes) {
      if (tensor.rfind(p, 0) == 0) return true;
    }
  }
  return false;
}

void Slots::init_recast_layers(const DenseInitFn& dense) const {
  torch::NoGradGuard no_grad;
  for (const auto& b : built_) {
    if (b.recast.empty()) continue;
    for (const auto& [key, filler] : fillers_) {
      if (key == b.recast) filler->init(b.slot, *b.module, dense);
    }
  }
}

}  // namespace recast::models
