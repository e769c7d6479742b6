#pragma once

// Pretrained convolutions (Tay et al. 2021; the layers of Wu et al. 2019): a
// convolution block in place of a self-attention, inside the unchanged
// Transformer block (norm, residual, feed-forward). Mesh TensorFlow's
// LocalConvAttnBlock:
//
//   g = (x W1 + b1) * sigmoid(x W2 + b2)      GLU input projection, D -> C
//   y = conv(g)                                depthwise over time, [B, T, C]
//   out = o_proj(y)                            the attention's own output projection
//
// with C the width the output projection takes (heads * head_dim). Kinds:
//   lightweight  H kernels of width K, softmax over K, channel c uses kernel
//                floor(c / (C / H)) (weight [H, K])
//   dynamic      the kernel at each position predicted from g_t by a linear
//                C -> H * K, softmax over K (weight [H * K, C], bias [H * K])
//   dilated      one kernel per channel with dilation d, softmax-normalised
//                or not (weight [C, K])
// DropConnect (weight_dropout) drops kernel entries in training. Encoders
// convolve centred windows, decoders causal ones (K - 1 taps on the left);
// padding positions of g are zeroed first, so they contribute nothing.
// Decoding keeps each layer's last d (K - 1) GLU outputs (KVCache::windows):
// constant memory per sequence, whatever its length.
//
// Tensors, under the attention's module name: conv_glu.{weight [2C, D],
// bias [2C] where the attention's projections have biases} (W1 the first C
// rows, W2 the last C) and conv.weight (+ conv.bias for dynamic).

#include "recast/layers/attention_core.h"
#include "recast/layers/linear_attention.h"
#include "recast/ops/token_conv.h"

#include <nlohmann/json.hpp>
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

namespace recast::layers {

// What config.json's "recast_conv" block says.
struct ConvConfig {
  std::string kind = "lightweight";   // lightweight | dynamic | dilated
  std::vector<std::string> modules;   // attention modules that are convolutions
  std::vector<int64_t> kernels;       // kernel width of each (same order)
  int64_t heads = 0;                  // kernels of lightweight / dynamic (0: the attention's heads)
  int64_t dilation = 1;
  std::string normalize = "softmax";  // softmax | none (dilated only)
  double weight_dropout = 0;          // DropConnect probability in training

  static ConvConfig parse(const nlohmann::json& block);  // validates
  nlohmann::json to_json() const;
  // The kernel width of `module`, or 0 when it is not converted.
  int64_t kernel_of(const std::string& module) const;
};

// The kernel parameters of one layer ("conv" under the attention module).
class ConvKernelImpl : public torch::nn::Module {
 public:
  ConvKernelImpl(const ConvConfig& config, int64_t channels, int64_t heads, int64_t kernel);
  // [H, K] / [C, K] normalised, or [B, T, H, K] predicted from g [B, T, C].
  at::Tensor forward(const at::Tensor& g);
  // fairseq's initialisation: Xavier-uniform kernels (dynamic: the
  // predictor's weight, a zero bias).
  void reset_parameters();
  at::Tensor weight, bias;

 private:
  std::string kind_, normalize_;
  double dropout_;
  int64_t heads_, kernel_;
};
TORCH_MODULE(ConvKernel);

class ConvMixerImpl : public AttentionCoreImpl {
 public:
  // in: the attention's input width, out: its output projection's input
  // width; bias: whether the GLU projection has one.
  ConvMixerImpl(AttentionSpec spec, const ConvConfig& config, int64_t in, int64_t out, bool bias,
                int64_t kernel);
  bool mixes_input() const override { return true; }
  at::Tensor mix(const at::Tensor& x, const ops::AttentionMask& mask, KVCache* cache) override;
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const ops::AttentionMask& mask, KVCache* cache) override;
  std::string describe() const override;

  int64_t kernel() const { return kernel_; }
  int64_t channels() const { return channels_; }
  // Kept from the GLU's input to the conv: d (K - 1) rows when causal.
  int64_t window() const;

  torch::nn::Linear conv_glu{nullptr};
  ConvKernel conv{nullptr};
  // Attention transfer: while probe.on, the layer compares its output with
  // `teacher` (the softmax attention's output on the same input, [B, H, T,
  // head_dim]) and passes the teacher's on.
  TransferProbe probe;
  at::Tensor teacher;
  ops::ConvPath path = ops::ConvPath::Auto;

 private:
  ConvConfig config_;
  int64_t channels_, kernel_;
};

}  // namespace recast::layers
