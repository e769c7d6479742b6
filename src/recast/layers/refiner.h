#pragma once

// Refiner's attention-map refinement (Zhou et al. 2021; ../docs/recasts/
// refiner.md derives it), for a ViT's softmax attention. The maps
// A [B, H, N, N] (CLS row and column included) are treated as an image of H
// channels:
//
//   E = act(norm(W_e A))            1x1 conv across heads, H -> rH ("expansion")
//   D = act(norm(dwconv_K(E)))      depthwise KxK over each N x N map ("distributed
//                                   local attention"), zero padding K // 2
//   R = norm(W_r D)                 1x1 conv, rH -> H ("reduction")
//   A'_h = A_h + g_h R_h            g_h = 0 at insertion
//   out = A' V
//
// norm is BatchNorm2d and act ReLU6 as released (refiner_utils.py's DLA), or
// both left out. The released DLA adds R with no gate and the last BN's scale
// at 1, so inserting it changes a pretrained ViT; here a per-head gate g,
// zero at insertion, makes A' = A exactly, in training and in eval mode, and
// (entering linearly, ReZero style) gets the gradient sum <dL/dA'_h, R_h>
// from the first step, so the branch opens as fine-tuning asks. (Zeroing the
// last BN's scale would be exact too, but only where there is a BN: the gate
// serves both norm options.) A' is not re-normalised, as in the reference.
//
// Two paths, tested against each other forward and backward:
//   forward            the convolutions batched over B x heads, the rH
//                      expanded channels taken H at a time (the norms and the
//                      depthwise conv are per channel, so chunks are exact),
//                      each chunk's reduction accumulated: the largest
//                      temporary is [B, H, N, N], never the [B, rH, N, N]
//                      expansion.
//   forward_reference  every expanded map written out as the sum over heads,
//                      the depthwise conv as K^2 shifted copies, the batch
//                      norm from its formula (obviously right; slow; leaves
//                      the running statistics alone).

#include "recast/layers/attention_core.h"

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace recast::layers {

struct RefinerOptions {
  int64_t heads = 1;
  int64_t expansion = 3;    // r
  int64_t kernel = 3;       // K, odd
  bool batch_norm = true;   // BN + ReLU6 as released; false: neither
  double bn_eps = 1e-5, bn_momentum = 0.1;
};

class MapRefinerImpl : public torch::nn::Module {
 public:
  explicit MapRefinerImpl(const RefinerOptions& o);

  at::Tensor forward(const at::Tensor& maps);            // [B, H, N, N] -> A'
  at::Tensor forward_reference(const at::Tensor& maps);  // the same, term by term

  const RefinerOptions& options() const { return o_; }
  int64_t expanded() const { return o_.heads * o_.expansion; }

  // As torch.nn would hold them, so the checkpoint reads
  // "....refiner.expand.weight", "....refiner.local_norm.running_mean":
  torch::nn::Conv2d expand{nullptr};  // H -> rH, 1x1
  torch::nn::Conv2d local{nullptr};   // rH -> rH, KxK, groups rH
  torch::nn::Conv2d reduce{nullptr};  // rH -> H, 1x1
  torch::nn::BatchNorm2d expand_norm{nullptr}, local_norm{nullptr}, reduce_norm{nullptr};
  at::Tensor gate;                    // [H], 0 at insertion
  // With capture on, forward keeps its last input and output maps (detached;
  // analysis and the training statistics).
  bool capture = false;
  at::Tensor captured_raw, captured_refined;

 private:
  // Batch norm of channels [c0, c0 + n) of `norm` for x [B, n, N, N]: batch
  // statistics in training (updating the running ones), running ones in eval.
  at::Tensor normalise(const at::Tensor& x, torch::nn::BatchNorm2d& norm, int64_t c0, int64_t n);
  // The same from its formula, statistics untouched.
  at::Tensor normalise_reference(const at::Tensor& x, torch::nn::BatchNorm2d& norm) const;
  RefinerOptions o_;
};
TORCH_MODULE(MapRefiner);

// Shared maps (the released Refiner-ViT's share_atten): a block with no
// queries and keys works on the softmax maps of the block before it. The
// giving core leaves its raw maps here in its forward; the taking core takes
// them (and empties the hand-off) in its own, so autograd carries the taker's
// gradient back to the giver's queries and keys.
struct MapHandoff {
  at::Tensor maps;
};

// The projection of a block that takes its maps: only the values,
// v = W x + b [.., in] -> [.., width], returned behind `lead` zero columns
// (the queries' and keys' place in a fused qkv output), so the attention
// module that splits its qkv runs unchanged. Its tensors are "weight"
// [width, in] and "bias" [width] (the released Linear(dim, dim)).
class ValueProjectionImpl : public torch::nn::Module {
 public:
  ValueProjectionImpl(int64_t in, int64_t width, int64_t lead, bool bias);
  at::Tensor forward(const at::Tensor& x);
  int64_t lead() const { return lead_; }
  at::Tensor weight, bias;

 private:
  int64_t lead_;
};
TORCH_MODULE(ValueProjection);

// The attention core that refines its maps: softmax(q k^T * scale), refined,
// applied to v. Bidirectional (a ViT's attention); no KV cache.
// With shared maps: `give` set, its raw maps are handed to the next block;
// `take` set, q and k are not used and the maps are the ones handed over.
// Without a refiner (options none) the maps are applied as they are (a
// block that only gives its maps).
class RefinedAttentionImpl : public AttentionCoreImpl {
 public:
  RefinedAttentionImpl(AttentionSpec spec, const std::optional<RefinerOptions>& o,
                       std::shared_ptr<MapHandoff> give = nullptr,
                       std::shared_ptr<MapHandoff> take = nullptr);
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const ops::AttentionMask& mask, KVCache* cache) override;
  std::string describe() const override;
  // The softmax maps before refinement [B, H, N, N] (for analysis).
  at::Tensor maps(const at::Tensor& q, const at::Tensor& k) const;
  MapRefiner refiner{nullptr};  // null: the maps pass unrefined
  std::shared_ptr<MapHandoff> give, take;
};
TORCH_MODULE(RefinedAttention);

// Summaries of one layer's maps, raw A and refined A' [B, H, N, N], over the
// patch queries (the leading N - g^2 tokens, CLS, are not patches; g^2 the
// largest square <= N). A' is not a distribution: its weights are taken as
// max(A', 0) renormalised per query row.
//   entropy   -sum_j p_j log p_j over all N keys, in nats, averaged over
//             batch, heads and queries (log N: uniform; 0: one key)
//   distance  sum_j p_j |pos_j - pos_i| over the patch keys (p renormalised
//             over them), in patches, averaged likewise: the mean attention
//             distance of Dosovitskiy et al.
//   change    ||A' - A|| / ||A|| (Frobenius, the whole batch)
struct MapSummary {
  double entropy_raw = 0, entropy_refined = 0, distance_raw = 0, distance_refined = 0, change = 0;
  std::vector<double> entropy_raw_heads, entropy_refined_heads;
};
MapSummary summarise_maps(const at::Tensor& raw, const at::Tensor& refined);

// Per MapRefiner in `model`, by the name of the attention it sits in
// ("blocks.3.attn"; a core's children are registered on its attention): gate per head, and the
// summaries above of the maps `run_forward` produced. Null when there is none.
nlohmann::json refiner_stats(torch::nn::Module& model, const std::function<void()>& run_forward);

// What config.json's "recast_refiner" block says: which attention layers (by
// block index) refine their maps, and how.
//   {"layers": [0, 1, ...], "expansion": 3, "kernel": 3, "norm": "bn" | "none",
//    "shared": false}
// shared (from scratch; the released Refiner-ViT): every odd block of
// `layers` has no queries and keys and refines the raw maps of the block
// before it (which refines its own maps only if it is in `layers` too).
struct RefinerConfig {
  std::set<int64_t> layers;
  int64_t expansion = 3, kernel = 3;
  bool batch_norm = true, shared = false;
  // Validates every key (unknown ones, types, ranges), naming the key.
  static RefinerConfig parse(const nlohmann::json& block);
  nlohmann::json to_json() const;
  RefinerOptions options(int64_t heads) const;
};

}  // namespace recast::layers
