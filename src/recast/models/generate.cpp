#include "recast/models/generate.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/models/decode_steps.h"
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

namespace {

// A batch of `seqs` left-padded to the longest, as transformers' generate
// pads: the mask hides the padding, positions count real tokens (padding
// gets position 1). mask and next_pos stay on the host.
struct LeftPadded {
  Batch batch;
  bool padded = false;  // rows of unequal length: mask and positions explicit
  at::Tensor mask;      // int64 [B, T] (when padded)
  at::Tensor next_pos;  // int64 [B, 1]: the next token's position on each row
};

LeftPadded left_padded(const std::vector<std::vector<int64_t>>& seqs, int64_t pad, c10::Device device) {
  const auto rows = static_cast<int64_t>(seqs.size());
  const auto ids_options = at::TensorOptions().dtype(at::kLong);
  size_t longest = 0;
  for (const auto& s : seqs) longest = std::max(longest, s.size());
  LeftPadded p;
  for (const auto& s : seqs) p.padded = p.padded || s.size() != longest;
  std::vector<int64_t> ids(static_cast<size_t>(rows) * longest, pad), real(ids.size(), 0);
  for (size_t r = 0; r < seqs.size(); ++r) {
    const size_t lead = longest - seqs[r].size();
    std::copy(seqs[r].begin(), seqs[r].end(), ids.begin() + static_cast<ptrdiff_t>(r * longest + lead));
    std::fill(real.begin() + static_cast<ptrdiff_t>(r * longest + lead),
              real.begin() + static_cast<ptrdiff_t>((r + 1) * longest), 1);
  }
  const auto t = static_cast<int64_t>(longest);
  p.batch.input_ids = at::tensor(ids, ids_options).view({rows, t}).to(device);
  p.batch.logits_to_keep = 1;  // sampled from the last position only
  if (p.padded) {
    p.mask = at::tensor(real, ids_options).view({rows, t});
    const at::Tensor pos = (p.mask.cumsum(1) - 1).masked_fill(p.mask.eq(0), 1);
    p.next_pos = p.mask.sum(1, /*keepdim=*/true);
    p.batch.attention_mask = p.mask.to(device);
    p.batch.position_ids = pos.to(device);
  } else {
    p.next_pos = at::full({rows, 1}, t, ids_options);
  }
  return p;
}

// Past the model's context: every row keeps its last context/2 tokens (prompt
// and generated; a stopped row: anything will do) to prefill afresh.
std::vector<std::vector<int64_t>> slide(const std::vector<std::vector<int64_t>>& prompts,
                                        const std::vector<std::vector<int64_t>>& out,
                                        const std::vector<bool>& done, const GenerateOptions& o) {
  const auto keep = static_cast<size_t>(o.context / 2);
  std::vector<std::vector<int64_t>> tails;
  for (size_t r = 0; r < prompts.size(); ++r) {
    std::vector<int64_t> all = prompts[r];
    all.insert(all.end(), out[r].begin(), out[r].end());
    if (done[r]) all.push_back(o.pad);
    tails.emplace_back(all.end() - static_cast<ptrdiff_t>(std::min(keep, all.size())), all.end());
  }
  log::debug("context of ", o.context, " tokens full: sliding to the last ", keep);
  return tails;
}

// Positions the static cache reserves: the longest prompt and every new
// token, within the context.
int64_t cache_positions(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& o) {
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  int64_t n = static_cast<int64_t>(longest) + std::max<int64_t>(o.max_tokens, 1);
  if (o.context > 0) n = std::min(n, o.context);
  return n;
}

std::vector<std::vector<int64_t>> generate_eager(Model& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerateOptions& o, at::Generator& gen,
                                                 const std::function<void(size_t, int64_t)>& on_token) {
  const auto rows = static_cast<int64_t>(prompts.size());
  const c10::Device device = model.device();
  const auto ids_options = at::TensorOptions().dtype(at::kLong);
  std::vector<std::vector<int64_t>> out(prompts.size());
  std::vector<bool> done(prompts.size(), false);
  KVCache cache;
  if (o.static_cache) cache.reserve(cache_positions(prompts, o));
  LeftPadded p = left_padded(prompts, o.pad, device);
  at::Tensor mask = p.mask, next_pos = p.next_pos;
  for (int64_t step = 0; step < o.max_tokens; ++step) {
    if (o.context > 0 && cache.length() + p.batch.input_ids.size(1) > o.context) {
      // Each slide costs one forward over context/2 tokens.
      cache.clear();
      p = left_padded(slide(prompts, out, done, o), o.pad, device);
      mask = p.mask, next_pos = p.next_pos;
    }
    const at::Tensor logits = model.forward(p.batch, nullptr, &cache);
    std::vector<int64_t> next(prompts.size(), o.pad);
    if (!sample_rows(logits, o, gen, done, out, next, on_token)) break;
    p.batch.input_ids = at::tensor(next, ids_options).view({rows, 1}).to(device);
    if (p.padded) {
      mask = at::cat({mask, at::ones({rows, 1}, ids_options)}, 1);
      p.batch.attention_mask = mask.to(device);
      p.batch.position_ids = next_pos.to(device);
      next_pos = next_pos + 1;
    }
  }
  return out;
}

std::vector<std::vector<int64_t>> generate_fixed(Model& model,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GenerateOptions& o, at::Generator& gen,
                                                 const std::function<void(size_t, int64_t)>& on_token) {
  const auto rows = static_cast<int64_t>(prompts.size());
  const c10::Device device = model.device();
  std::vector<std::vector<int64_t>> out(prompts.size());
  std::vector<bool> done(prompts.size(), false);
  if (o.max_tokens <= 0) return out;
  KVCache cache;
  cache.reserve(cache_positions(prompts, o));
  std::optional<at::Generator> noise = o.device_gen;
  if (!noise && device.is_cpu()) noise = gen;
  FixedSteps steps(model, cache, rows, o.max_tokens, o.sampling, noise,
                   o.cuda_graph && device.is_cuda());
  int64_t produced = 0, consumed = 0;  // tokens in the device history / handed out
  auto prefill = [&](const std::vector<std::vector<int64_t>>& seqs) {
    steps.finish();
    cache.clear();
    const LeftPadded p = left_padded(seqs, o.pad, device);
    const at::Tensor logits = model.forward(p.batch, nullptr, &cache);
    steps.start(logits.select(1, logits.size(1) - 1), p.mask, p.next_pos, produced++);
  };
  // Hands the new tokens out; false when every row has stopped.
  auto flush = [&] {
    if (produced > consumed) {
      const at::Tensor fresh = steps.history().narrow(1, consumed, produced - consumed).cpu().contiguous();
      const int64_t* ids = fresh.data_ptr<int64_t>();
      const int64_t n = fresh.size(1);
      for (int64_t j = 0; j < n; ++j) {
        for (size_t r = 0; r < out.size(); ++r) {
          if (done[r]) continue;
          const int64_t id = ids[static_cast<int64_t>(r) * n + j];
          if (id == o.eos && o.eos >= 0) {
            done[r] = true;
            continue;
          }
          out[r].push_back(id);
          if (on_token) on_token(r, id);
        }
      }
      consumed = produced;
    }
    return std::find(done.begin(), done.end(), false) != done.end();
  };
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  prefill(o.context > 0 && static_cast<int64_t>(longest) > o.context ? slide(prompts, out, done, o)
                                                                      : prompts);
  const int64_t every = std::max<int64_t>(o.stream_every, 1);
  while (produced < o.max_tokens) {
    if (produced - consumed >= every && !flush()) return out;
    if (o.context > 0 && steps.tokens() + 1 > o.context) {
      if (!flush()) return out;
      prefill(slide(prompts, out, done, o));
      continue;
    }
    steps.step();
    ++produced;
  }
  flush();
  steps.finish();
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
  torch::NoGradGuard no_grad;
  if (model.task() == Task::Seq2SeqLM) {
    return generate_seq2seq(static_cast<Seq2SeqModel&>(model), prompts, o, gen, on_token);
  }
  RECAST_CHECK(o.context == 0 || o.context >= 2, "generate: context ", o.context, " is too short");
  const bool fixed = o.steps == GenerateOptions::Steps::Fixed ||
                     (o.steps == GenerateOptions::Steps::Auto && o.cuda_graph && model.device().is_cuda());
  return fixed ? generate_fixed(model, prompts, o, gen, on_token)
               : generate_eager(model, prompts, o, gen, on_token);
}

}  // namespace recast::models
