#pragma once

// Factorized layers (Khodak et al. 2021): a weight W (m x n) held as the
// product U V^T of two thin factors (U: m x r, V: n x r), spectrally
// initialised from a dense weight and regularised by Frobenius decay
// (lambda/2) ||U V^T||_F^2 rather than weight decay on U and V.
//
// Storage, in the order the factors are applied (each a weight of the layer
// that applies it, so the checkpoint reads like two ordinary layers):
//   FactorizedLinear   NAME.weight_v [r, n]  (V^T)   then NAME.weight_u [m, r]  (U),  NAME.bias [m]
//   FactorizedConv2d   NAME.weight_v [r, I, kh, kw]  (a kh x kw conv to r channels: V^T)
//                      NAME.weight_u [O, r, 1, 1]    (a 1x1 conv to O channels: U),    NAME.bias [O]
// A conv weight (O, I, kh, kw) is the O x (I*kh*kw) matrix of its own
// row-major layout: row o holds the taps of output channel o in (i, a, b)
// order, which is exactly the layout of the r-channel conv's weight. No
// permute is needed (the reference code's reshape of (O*kh) x (I*kw) is what
// breaks pretrained convolutions).

#include <ATen/ATen.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace recast::layers {

// ---------------------------------------------------------------- spectral init

// The SVD W = A S B^T of a 2-D weight, computed in fp64 on the CPU.
struct Spectrum {
  at::Tensor a, s, b;  // [m, k], [k] descending, [n, k]; k = min(m, n); fp64 CPU
  int64_t rows() const { return a.size(0); }
  int64_t cols() const { return b.size(0); }
  int64_t full_rank() const { return s.size(0); }
};
Spectrum spectrum(const at::Tensor& w);

// U = A_r sqrt(S_r) [m, r], V = B_r sqrt(S_r) [n, r] (fp64; cast at the caller).
struct Factors {
  at::Tensor u, v;
};
Factors spectral_factors(const Spectrum& sp, int64_t rank);

// ||W - U V^T||_F / ||W||_F at rank r by Eckart-Young: sqrt(sum_{i>r} s_i^2 / sum s_i^2).
double eckart_young_relative(const at::Tensor& s, int64_t rank);

// Rank rules. `ratio`: round(ratio * min(m, n)), at least 1. `energy`: the
// smallest r whose leading singular values keep that fraction of sum s^2.
int64_t rank_for_ratio(double ratio, int64_t m, int64_t n);
int64_t rank_for_energy(const at::Tensor& s, double energy);
// What both energy rules stand on: the fraction of sum s^2 the leading 1..k
// singular values keep (all 1 for a zero matrix), and the smallest rank whose
// fraction reaches `fraction` (1 for 0; no range check).
std::vector<double> energy_kept(const at::Tensor& s);
int64_t rank_keeping(const std::vector<double>& kept, double fraction);
// Whether rank r stores fewer numbers than the dense m x n weight.
inline bool saves_parameters(int64_t m, int64_t n, int64_t r) { return r * (m + n) < m * n; }

// The balanced factorization of the same product: U' V'^T = U V^T with
// U'^T U' = V'^T V' = the product's leading singular values (QR of each
// factor, SVD of the r x r core), as the spectral init's factors are.
Factors balanced(const Factors& f);

// ---------------------------------------------------------------- data-aware init
//
// Truncation-aware whitening (SVD-LLM): with G the second moment of the
// layer's inputs (n x n, sum of x x^T over the rows it sees), the rank-r W'
// that keeps the outputs closest, min ||(W - W') X||_F, is
// A_r S_r B_r^T L^{-1} from the SVD A S B^T of W L, L L^T = G (Cholesky),
// and its output error is exactly sqrt(sum_{i>r} s_i^2) of that spectrum.
// G is damped to G + damp * mean(diag G) * I: positive definite, and the
// objective becomes ||(W - W') X||^2 + damp * mean(diag G) * ||W - W'||^2.
// Where the Cholesky still fails the damping grows tenfold (up to 1); a G of
// zeros (a layer that saw only zeros) whitens with I, the plain SVD.
struct Whitened {
  Spectrum sp;      // of W L: the rank rules read the output energy from it
  at::Tensor chol;  // L [n, n], lower triangular, fp64 CPU
  double damp = 0;  // the damping used
};
Whitened whitened_spectrum(const at::Tensor& w, const at::Tensor& gram, double damp);
// Balanced factors of A_r S_r B_r^T L^{-1}; at full rank U V^T = W.
Factors whitened_factors(const Whitened& wh, int64_t rank);
// sqrt(tr(E G E^T) / tr(W G W^T)) for E = W - U V^T: the relative error of
// the layer's outputs on inputs whose second moment is G (fp64).
double output_error(const at::Tensor& w, const Factors& f, const at::Tensor& gram);

// Sums x x^T over the rows of the inputs a layer sees (fp64, on their device).
struct InputGram {
  at::Tensor sum;  // [n, n]
  int64_t rows = 0;
  void add(const at::Tensor& x);  // x: [rows, n]
};

// (1/2) ||U V^T||_F^2 = (1/2) sum((U^T U) o (V^T V)) through the r x r Gram
// matrices, never forming U V^T; summed over any leading batch dimensions
// (u: [..., m, r], v: [..., n, r]). Differentiable: its gradient is
// dU = U (V^T V), dV = V (U^T U). Computed in fp32 or wider.
at::Tensor frobenius_penalty(const at::Tensor& u, const at::Tensor& v);

// ---------------------------------------------------------------- layers

// How a factorized layer computes when autograd is off (inference).
// Training always runs the two thin products.
enum class Dispatch {
  Automatic,   // the faster of the two for the shape and device (see factorized_is_faster)
  Factorized,  // always the two thin products
  Dense,       // always the merged U V^T (cached until the factors change)
};

// Whether x [tokens, n] -> [tokens, m] through rank r is faster as two thin
// products than as one dense product on `device`, by the crossover measured
// in bench/bench_factorized (docs/recasts/factorize.md has the table).
bool factorized_is_faster(int64_t m, int64_t n, int64_t r, int64_t tokens, c10::Device device);

struct FactorizedLinearOptions {
  int64_t in = 0, out = 0, rank = 0;
  bool bias = true;
  Dispatch dispatch = Dispatch::Automatic;
};

class FactorizedLinearImpl : public torch::nn::Cloneable<FactorizedLinearImpl> {
 public:
  explicit FactorizedLinearImpl(FactorizedLinearOptions options);
  void reset() override;
  at::Tensor forward(const at::Tensor& x);

  // Spectral init from a dense weight [out, in] (fp64 SVD).
  void set_from_dense(const at::Tensor& w);
  // Sets U [out, r] and V [in, r] (any floating dtype; cast to the parameters').
  void set_factors(const Factors& f);
  // U V^T as [out, in] (differentiable).
  at::Tensor dense_weight() const;
  // The factors as the Frobenius decay sees them: U [out, r], V [in, r] (views).
  Factors factors() const;

  const FactorizedLinearOptions& options() const { return options_; }
  FactorizedLinearOptions options_;
  at::Tensor weight_u, weight_v, bias;
  // When set, forward adds its inputs ([..., in] as rows) to this Gram.
  std::shared_ptr<InputGram> record_inputs;

 private:
  at::Tensor merged_;  // cached U V^T for Dispatch::Dense / Automatic
  int64_t merged_version_u_ = -1, merged_version_v_ = -1;
};
TORCH_MODULE(FactorizedLinear);

struct FactorizedConv2dOptions {
  int64_t in = 0, out = 0, rank = 0;
  std::vector<int64_t> kernel{1, 1}, stride{1, 1}, padding{0, 0}, dilation{1, 1};
  bool bias = false;
};

class FactorizedConv2dImpl : public torch::nn::Cloneable<FactorizedConv2dImpl> {
 public:
  explicit FactorizedConv2dImpl(FactorizedConv2dOptions options);
  void reset() override;
  at::Tensor forward(const at::Tensor& x);

  // Spectral init from a dense conv weight [O, I, kh, kw].
  void set_from_dense(const at::Tensor& w);
  // Sets U [O, r] and V [I*kh*kw, r].
  void set_factors(const Factors& f);
  // U V^T as a conv weight [O, I, kh, kw] (differentiable).
  at::Tensor dense_weight() const;
  // U [O, r], V [I*kh*kw, r] (views).
  Factors factors() const;

  const FactorizedConv2dOptions& options() const { return options_; }
  FactorizedConv2dOptions options_;
  at::Tensor weight_u, weight_v, bias;
  // When set, forward adds its input patches (im2col: [positions, I*kh*kw],
  // the rows the O x (I*kh*kw) matrix multiplies) to this Gram.
  std::shared_ptr<InputGram> record_inputs;
};
TORCH_MODULE(FactorizedConv2d);

// The config block that says which modules of a model are factorized, and at
// which rank: config["recast_factorized"] = {"layers": {"NAME": rank, ...}}.
struct FactorizedConfig {
  std::map<std::string, int64_t> layers;
  static std::optional<FactorizedConfig> from(const nlohmann::json& config);
  static FactorizedConfig parse(const nlohmann::json& block);  // the block itself
  nlohmann::json to_json() const;
  std::optional<int64_t> rank(const std::string& name) const;
};

// A factor pair the Frobenius decay acts on: U [..., m, r], V [..., n, r]
// (views of the parameters named in `params`).
struct FactorPair {
  std::string module;
  at::Tensor u, v;
  std::vector<std::string> params;
};

// Every FactorizedLinear / FactorizedConv2d under `module`, by dotted name.
std::vector<FactorPair> factorized_pairs(torch::nn::Module& module);

}  // namespace recast::layers
