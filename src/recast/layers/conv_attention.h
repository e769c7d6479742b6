#pragma once

// T-CNN's layer (d'Ascoli et al. 2021): gated positional self-attention that
// is *exactly* a given KxK convolution at initialisation and can be fine-tuned
// into attention. ../docs/recasts/tcnn.md derives it; in short, per head h:
//
//   A_h = P_h + g_h (softmax(Q_h K_h^T / sqrt(d)) - P_h)      g_h = 0 at init
//   y_q = sum_h W_h ( sum_k A_h[q, k] x_k ) + bias
//
// K^2 heads, head h = i*K + j centred on the tap offset delta_h = (i - c, j - c),
// c = K // 2; W_h = weight[:, :, i, j], so `weight` keeps the conv's layout and
// name. Keys are the input grid with a ring of c zero-valued tokens, so a
// query at the border attends to zeros exactly as zero padding does. Queries
// sit on the strided grid (stride 1 or 2).
// Positional attention P_h (logits -alpha_h ||Delta - delta_h||^2 over keys):
//   hard  one-hot on the tap (alpha -> infinity): exact;
//   soft  finite alpha_h and delta_h, both learnable.
// The gate enters linearly (ReZero style), so it is exactly 0 at init and its
// gradient is not vanishing, unlike ConViT's sigmoid(lambda).
//
// Two paths, tested against each other forward and backward:
//   forward            hard: conv2d(x, weight * (1 - g_tap)) + content; soft:
//                      the dense P (input-independent) by matmul; the content
//                      branch through scaled_dot_product_attention (three
//                      ways, ContentPath), skipped while every gate is 0
//                      and no gradient is needed.
//   forward_reference  every head's attention matrix materialised, then the
//                      formula above term by term (obviously right; slow).

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace recast::layers {

// How the fast path computes the content branch sum_h g_h W_h softmax(Q_h K_h^T) x
// (each equals forward_reference; they differ in speed, bench_conv_attention):
//   values_first   V_h = x (g_h W_h)^T, width `out`, one attention call for all
//                  heads, then the sum over heads. Fewest FLOPs, but a value
//                  width of `out` rules out flash attention.
//   chunked        Z_h = softmax(Q_h K_h^T) x with x cut into w-wide chunks
//                  folded into the heads (w = qk_dim, at least 64; q and k
//                  zero-padded to w), so that q, k and v share a head width
//                  flash attention takes; then sum_h g_h W_h Z_h as one
//                  matmul. Needs `in` % w == 0 (else values_first).
//   automatic      chunked on CUDA from 14x14 = 196 input tokens on when
//                  qk_dim >= 64 (no padding: `in` >= 512 by default), else
//                  values_first (measured on an H100, docs/results.md)
enum class ContentPath { Automatic, ValuesFirst, Chunked };

struct ConvAttentionOptions {
  int64_t in = 0, out = 0, kernel = 3, stride = 1;
  ContentPath content = ContentPath::Automatic;
  bool bias = false;
  int64_t qk_dim = 0;           // per-head query/key width; 0: max(16, in / K^2) rounded up to 8
  std::optional<double> alpha;  // soft mode's initial locality strength; none: hard
};

class ConvAttentionImpl : public torch::nn::Module {
 public:
  explicit ConvAttentionImpl(const ConvAttentionOptions& o);

  at::Tensor forward(const at::Tensor& x);            // [B, in, H, W] -> [B, out, H', W']
  at::Tensor forward_reference(const at::Tensor& x);

  // Each head's attention for one batch element [heads, Lq, Lk] (keys on the
  // padded grid, queries on the strided output grid), and the grid sizes.
  struct Maps {
    at::Tensor attention;      // A_h (what the layer uses)
    int64_t out_h, out_w, padded_h, padded_w;
  };
  Maps attention_maps(const at::Tensor& x_one);  // x_one [1, in, H, W]
  // ConViT's non-locality: per head, sum_k A[q, k] ||pos_k - pos_q|| averaged
  // over queries (in input pixels), for a batch [B, in, H, W] -> [heads].
  at::Tensor mean_attention_distance(const at::Tensor& x);

  const ConvAttentionOptions& options() const { return o_; }
  int64_t heads() const { return o_.kernel * o_.kernel; }
  // Output rows (or columns) for n input rows: zero padding K // 2, the stride.
  int64_t out_size(int64_t n) const { return (n - 1) / o_.stride + 1; }
  bool hard() const { return !o_.alpha.has_value(); }

  at::Tensor weight;   // [out, in, K, K] (the conv's)
  at::Tensor bias;     // [out] or undefined
  at::Tensor gate;     // [heads], 0 at init
  at::Tensor centers;  // [heads, 2] (dy, dx): the tap offsets; learnable in soft mode
  at::Tensor alpha;    // [heads] (soft mode)
  torch::nn::Linear qk{nullptr};  // in -> 2 * heads * qk_dim, no bias

  // Conversion reports: when set, forward keeps its input (detached).
  bool capture_input = false;
  at::Tensor captured_input;

 private:
  // Key position minus query position [Lq, Lk, 2] in input pixels (keys on
  // the padded grid, queries on the strided output grid).
  at::Tensor offsets(int64_t h, int64_t w, const at::TensorOptions& opts) const;
  at::Tensor positional(int64_t h, int64_t w, const at::Tensor& like);  // P [heads, Lq, Lk]
  // The content branch's Q [B, heads, Lq, d] and K [B, heads, HW, d] in x's dtype.
  std::pair<at::Tensor, at::Tensor> queries_keys(const at::Tensor& x) const;
  at::Tensor content_scores(const at::Tensor& x);  // softmax(QK^T) [B, heads, Lq, HW]
  at::Tensor content(const at::Tensor& x);         // the content branch [B, Lq, out]
  at::Tensor queries_of(const at::Tensor& x) const;  // x at the strided query positions
  ConvAttentionOptions o_;
  int64_t qk_dim_;
};
TORCH_MODULE(ConvAttention);

// Per ConvAttention in `model` (by its name): the gate values and the mean
// attention distance of each head on `pixels` (the model's input [B, C, H, W];
// each layer sees its own input in that forward). Null when there is none.
nlohmann::json conv_attention_stats(torch::nn::Module& model,
                                    const std::function<void()>& run_forward);

// What config.json's "recast_tcnn" block says about a converted model: which
// convolutions (by checkpoint name) are ConvAttention, and how.
struct TcnnConfig {
  std::set<std::string> layers;  // "layer4.0.conv1", ...
  std::optional<double> alpha;   // none: hard positional attention
  int64_t qk_dim = 0;            // 0: the default per layer
  static std::optional<TcnnConfig> from(const nlohmann::json& config);
  static TcnnConfig parse(const nlohmann::json& block);  // the block itself
  nlohmann::json to_json() const;
  bool converted(const std::string& name) const { return layers.count(name) != 0; }
};

}  // namespace recast::layers
