#include "recast/models/decode_steps.h"

#include "recast/core/error.h"
#include "recast/core/log.h"

#include <torch/torch.h>

#if RECAST_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <limits>

namespace recast::models {

at::Tensor sample_on_device(const at::Tensor& raw, const SamplingOptions& o,
                            std::optional<at::Generator> gen) {
  RECAST_CHECK(raw.dim() == 2, "sample_on_device: expected logits [B, V], found ", raw.sizes());
  at::Tensor logits = raw.to(at::kFloat);
  if (o.temperature <= 0) return logits.argmax(-1);
  const int64_t vocab = logits.size(1);
  logits = logits / o.temperature;
  const float minus_inf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < vocab) {
    // topk sorts descending: the last kept is the k-th largest.
    const at::Tensor kth = std::get<0>(logits.topk(o.top_k, -1)).narrow(1, o.top_k - 1, 1);
    logits = logits.masked_fill(logits < kth, minus_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/-1, /*descending=*/true);
    const at::Tensor p = sorted.softmax(-1);
    // Drop a token when the tokens before it already reach top_p (keeps >= 1).
    const at::Tensor drop = (p.cumsum(-1) - p) >= o.top_p;
    logits = at::empty_like(logits).scatter_(-1, order, sorted.masked_fill(drop, minus_inf));
  }
  // u in (0, 1): -log(-log(u)) is Gumbel(0, 1); the argmax of logits + noise
  // is a sample of softmax(logits).
  const at::Tensor u = gen ? at::rand(logits.sizes(), *gen, logits.options())
                           : at::rand(logits.sizes(), logits.options());
  const double tiny = std::numeric_limits<float>::min();
  const at::Tensor gumbel = -(-(u.clamp(tiny, 1.0 - 1e-7)).log()).log();
  return (logits + gumbel).argmax(-1);
}

struct FixedSteps::Graph {
  bool wanted = false;
  bool failed = false;
  int64_t warm_steps = 0;
#if RECAST_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  std::optional<c10::cuda::CUDAStream> stream;
#endif
  bool captured() const {
#if RECAST_WITH_CUDA
    return graph != nullptr;
#else
    return false;
#endif
  }
};

FixedSteps::FixedSteps(Model& model, KVCache& cache, int64_t rows, int64_t history_len,
                       const SamplingOptions& sampling, std::optional<at::Generator> gen, bool graph)
    : model_(model), cache_(cache), sampling_(sampling), gen_(std::move(gen)), rows_(rows),
      graph_(std::make_unique<Graph>()) {
  RECAST_CHECK(rows >= 1 && history_len >= 1, "fixed decode steps: rows and history must be >= 1");
  RECAST_CHECK(cache.reserved() > 0, "fixed decode steps need a static (reserved) KV cache");
  const c10::Device device = model.device();
  const auto longs = at::TensorOptions().dtype(at::kLong).device(device);
  ids_ = at::zeros({rows, 1}, longs);
  positions_ = at::zeros({rows, 1}, longs);
  slot_ = at::zeros({1}, longs);
  column_ = at::zeros({1}, longs);
  history_ = at::zeros({rows, history_len}, longs);
  valid_ = at::zeros({rows, cache.reserved()}, longs.dtype(at::kBool));
  batch_.input_ids = ids_;
  batch_.position_ids = positions_;
  graph_->wanted = graph && device.is_cuda();
#if !RECAST_WITH_CUDA
  graph_->wanted = false;
#endif
}

FixedSteps::~FixedSteps() = default;

bool FixedSteps::graphed() const { return graph_->captured(); }

void FixedSteps::start(const at::Tensor& last_logits, const at::Tensor& key_mask,
                       const at::Tensor& next_positions, int64_t column) {
  torch::NoGradGuard no_grad;
  tokens_ = cache_.length();
  RECAST_CHECK(tokens_ >= 1 && tokens_ <= valid_.size(1), "fixed decode steps: the cache holds ",
               tokens_, " tokens, its buffers ", valid_.size(1));
  RECAST_CHECK(column >= 0 && column < history_.size(1), "fixed decode steps: history column ",
               column, " outside [0, ", history_.size(1), ")");
  valid_.zero_();
  if (key_mask.defined()) {
    RECAST_CHECK(key_mask.dim() == 2 && key_mask.size(0) == rows_ && key_mask.size(1) == tokens_,
                 "fixed decode steps: key mask [", rows_, ", ", tokens_, "] expected, found ",
                 key_mask.sizes());
    valid_.narrow(1, 0, tokens_).copy_(key_mask.ne(0));
  } else {
    valid_.narrow(1, 0, tokens_).fill_(true);
  }
  slot_.fill_(tokens_);
  column_.fill_(column);
  positions_.copy_(next_positions.expand({rows_, 1}));
  ids_.copy_(sample_on_device(last_logits, sampling_, gen_).view({rows_, 1}));
  history_.index_copy_(1, column_, ids_);
  column_.add_(1);
  cache_.set_fixed_step(slot_, valid_);
}

void FixedSteps::body() {
  valid_.index_fill_(1, slot_, true);
  const at::Tensor logits = model_.forward(batch_, nullptr, &cache_).select(1, 0);
  if (!logits_.defined()) logits_ = at::empty_like(logits);  // before any capture
  logits_.copy_(logits);
  ids_.copy_(sample_on_device(logits, sampling_, gen_).view({rows_, 1}));
  history_.index_copy_(1, column_, ids_);
  column_.add_(1);
  positions_.add_(1);
  slot_.add_(1);
}

void FixedSteps::step() {
  RECAST_CHECK(cache_.fixed_step(), "fixed decode steps: start() first");
  RECAST_CHECK(tokens_ < valid_.size(1), "fixed decode steps: the cache's ", valid_.size(1),
               " positions are full");
  torch::NoGradGuard no_grad;
  Graph& g = *graph_;
#if RECAST_WITH_CUDA
  if (g.wanted && !g.failed) {
    if (!g.stream) g.stream = c10::cuda::getStreamFromPool(false, model_.device().index());
    if (g.graph) {
      g.graph->replay();
    } else if (g.warm_steps < 1) {
      // Warm-up on the capture stream: kernels chosen, cuBLAS's workspace
      // and the allocator's blocks made for that stream.
      c10::cuda::device_synchronize();
      {
        c10::cuda::CUDAStreamGuard on(*g.stream);
        body();
      }
      c10::cuda::device_synchronize();
      ++g.warm_steps;
    } else {
      auto graph = std::make_unique<at::cuda::CUDAGraph>();
      c10::cuda::device_synchronize();
      try {
        {
          c10::cuda::CUDAStreamGuard on(*g.stream);
          graph->capture_begin();
          try {
            body();
          } catch (...) {
            try {
              graph->capture_end();
            } catch (...) {
            }
            throw;
          }
          graph->capture_end();
        }
        graph->replay();
        g.graph = std::move(graph);
        log::debug("decode step captured as a CUDA graph");
      } catch (const std::exception& e) {
        g.failed = true;
        std::string what = e.what();
        what = what.substr(0, what.find('\n'));
        log::info("CUDA graph capture of the decode step failed (", what, "): decoding eagerly");
        (void)cudaGetLastError();  // a failed capture leaves no sticky error; clear the last one
        body();
      }
    }
    cache_.tokens = ++tokens_;
    return;
  }
#endif
  (void)g;
  body();
  cache_.tokens = ++tokens_;
}

void FixedSteps::finish() {
  if (cache_.fixed_step()) cache_.end_fixed_steps(tokens_);
}

}  // namespace recast::models
