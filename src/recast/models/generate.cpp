#include "recast/models/generate.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/models/seq2seq.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

namespace recast::models {

int64_t sample_token(const at::Tensor& raw, const SamplingOptions& o, at::Generator& gen) {
  at::Tensor logits = raw.to(at::kCPU, at::kFloat);
  if (o.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / o.temperature;
  const float minus_inf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    const at::Tensor kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, minus_inf);
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    const at::Tensor p = sorted.softmax(0);
    // Drop a token when the tokens before it already reach top_p (keeps >= 1).
    const at::Tensor drop = (p.cumsum(0) - p) >= o.top_p;
    logits = logits.index_fill(0, order.masked_select(drop), minus_inf);
  }
  return at::multinomial(logits.softmax(0), 1, false, gen).item<int64_t>();
}

namespace {

// Samples the next token of every row still going from logits [B, 1, V];
// stopped rows get `pad`. Returns false when every row has stopped.
bool sample_rows(const at::Tensor& logits, const GenerateOptions& o, at::Generator& gen,
                 std::vector<bool>& done, std::vector<std::vector<int64_t>>& out,
                 std::vector<int64_t>& next,
                 const std::function<void(size_t, int64_t)>& on_token) {
  const at::Tensor last = logits.select(1, logits.size(1) - 1).to(at::kCPU, at::kFloat);
  bool going = false;
  for (size_t r = 0; r < out.size(); ++r) {
    next[r] = o.pad;
    if (done[r]) continue;
    const int64_t id = sample_token(last[static_cast<int64_t>(r)], o.sampling, gen);
    if (id == o.eos && o.eos >= 0) {
      done[r] = true;
      continue;
    }
    next[r] = id;
    out[r].push_back(id);
    if (on_token) on_token(r, id);
    going = true;
  }
  return going;
}

// Encoder-decoders: the prompts (right-padded, masked) go through the encoder
// once; the decoder starts from decoder_start_token_id and extends its cache
// one token per step, its cross-attention keys and values projected once.
// Relative positions bound no context, so there is no window to slide.
std::vector<std::vector<int64_t>> generate_seq2seq(
    Seq2SeqModel& model, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& o,
    at::Generator& gen, const std::function<void(size_t, int64_t)>& on_token) {
  const auto rows = static_cast<int64_t>(prompts.size());
  const c10::Device device = model.device();
  const auto ids_options = at::TensorOptions().dtype(at::kLong);
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  std::vector<int64_t> ids(static_cast<size_t>(rows) * longest, o.pad), real(ids.size(), 0);
  bool padded = false;
  for (size_t r = 0; r < prompts.size(); ++r) {
    std::copy(prompts[r].begin(), prompts[r].end(), ids.begin() + static_cast<ptrdiff_t>(r * longest));
    std::fill_n(real.begin() + static_cast<ptrdiff_t>(r * longest), prompts[r].size(), 1);
    padded = padded || prompts[r].size() != longest;
  }
  const auto s = static_cast<int64_t>(longest);
  Batch enc;
  enc.input_ids = at::tensor(ids, ids_options).view({rows, s}).to(device);
  at::Tensor mask;
  if (padded) mask = at::tensor(real, ids_options).view({rows, s}).to(device);
  enc.attention_mask = mask;
  const at::Tensor memory = model.encode(enc);
  KVCache cache;
  std::vector<std::vector<int64_t>> out(prompts.size());
  std::vector<bool> done(prompts.size(), false);
  std::vector<int64_t> next(prompts.size(), model.decoder_start_token());
  for (int64_t step = 0; step < o.max_tokens; ++step) {
    const at::Tensor step_ids = at::tensor(next, ids_options).view({rows, 1}).to(device);
    const at::Tensor logits = model.decode(step_ids, memory, mask, nullptr, &cache);
    if (!sample_rows(logits, o, gen, done, out, next, on_token)) break;
  }
  return out;
}

}  // namespace

std::vector<std::vector<int64_t>> generate(Model& model,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& o, at::Generator& gen,
                                           const std::function<void(size_t, int64_t)>& on_token) {
  RECAST_CHECK(!prompts.empty(), "generate: no prompt");
  for (size_t r = 0; r < prompts.size(); ++r) {
    RECAST_CHECK(!prompts[r].empty(), "generate: prompt ", r, " is empty");
  }
  if (model.task() == Task::Seq2SeqLM) {
    torch::NoGradGuard no_grad;
    return generate_seq2seq(static_cast<Seq2SeqModel&>(model), prompts, o, gen, on_token);
  }
  RECAST_CHECK(o.context == 0 || o.context >= 2, "generate: context ", o.context, " is too short");
  const auto rows = static_cast<int64_t>(prompts.size());
  const c10::Device device = model.device();
  const auto ids_options = at::TensorOptions().dtype(at::kLong);
  torch::NoGradGuard no_grad;

  std::vector<std::vector<int64_t>> out(prompts.size());
  std::vector<bool> done(prompts.size(), false);
  KVCache cache;
  Batch batch;
  bool padded = false;   // rows of unequal length: masks and positions are explicit
  at::Tensor mask;       // [B, cache + T] (when padded)
  at::Tensor next_pos;   // [B, 1]: the next token's position on each row (when padded)

  // Prefill: each row's tokens, left-padded to the longest; a fresh cache.
  auto prefill = [&](const std::vector<std::vector<int64_t>>& seqs) {
    size_t longest = 0;
    for (const auto& s : seqs) longest = std::max(longest, s.size());
    padded = false;
    for (const auto& s : seqs) padded = padded || s.size() != longest;
    std::vector<int64_t> ids(static_cast<size_t>(rows) * longest, o.pad), real(ids.size(), 0);
    for (size_t r = 0; r < seqs.size(); ++r) {
      const size_t lead = longest - seqs[r].size();
      std::copy(seqs[r].begin(), seqs[r].end(), ids.begin() + static_cast<ptrdiff_t>(r * longest + lead));
      std::fill(real.begin() + static_cast<ptrdiff_t>(r * longest + lead),
                real.begin() + static_cast<ptrdiff_t>((r + 1) * longest), 1);
    }
    const auto t = static_cast<int64_t>(longest);
    cache = KVCache();
    batch = Batch();
    batch.input_ids = at::tensor(ids, ids_options).view({rows, t}).to(device);
    if (padded) {
      mask = at::tensor(real, ids_options).view({rows, t});
      // As transformers: positions count real tokens; padding gets position 1.
      const at::Tensor pos = (mask.cumsum(1) - 1).masked_fill(mask.eq(0), 1);
      next_pos = mask.sum(1, /*keepdim=*/true);
      batch.attention_mask = mask.to(device);
      batch.position_ids = pos.to(device);
    }
  };
  prefill(prompts);

  for (int64_t step = 0; step < o.max_tokens; ++step) {
    if (o.context > 0 && cache.length() + batch.input_ids.size(1) > o.context) {
      // Past the model's context: every row keeps its last half and prefills
      // it afresh (each slide costs one forward over context/2 tokens).
      const auto keep = static_cast<size_t>(o.context / 2);
      std::vector<std::vector<int64_t>> tails;
      for (size_t r = 0; r < prompts.size(); ++r) {
        std::vector<int64_t> all = prompts[r];
        all.insert(all.end(), out[r].begin(), out[r].end());
        if (done[r]) all.push_back(o.pad);  // a stopped row: anything will do
        tails.emplace_back(all.end() - static_cast<ptrdiff_t>(std::min(keep, all.size())), all.end());
      }
      log::debug("context of ", o.context, " tokens full: sliding to the last ", keep);
      prefill(tails);
    }
    const at::Tensor logits = model.forward(batch, nullptr, &cache);
    std::vector<int64_t> next(prompts.size(), o.pad);
    if (!sample_rows(logits, o, gen, done, out, next, on_token)) break;
    batch.input_ids = at::tensor(next, ids_options).view({rows, 1}).to(device);
    if (padded) {
      mask = at::cat({mask, at::ones({rows, 1}, ids_options)}, 1);
      batch.attention_mask = mask.to(device);
      batch.position_ids = next_pos.to(device);
      next_pos = next_pos + 1;
    }
  }
  return out;
}

}  // namespace recast::models
