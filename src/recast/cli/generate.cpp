// recast generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]
//                 [--temperature T] [--top-k K] [--top-p P] [--seed S] [--json]
// Autoregressive sampling with the KV cache. Text streams to stdout as it is
// generated; --json prints {"prompt_ids": [...], "ids": [...], "text": "..."}
// at the end. With --prompt-ids it needs no tokenizer (ids in, ids out).

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace recast::cli {
namespace {

struct GenerateCli {
  std::string model, prompt, prompt_ids, device = "cpu";
  bool has_prompt = false;
  int64_t max_tokens = 100, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false, ignore_eos = false;
};

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) {
      throw UsageError(msg("--prompt-ids: expected comma-separated integers, found ", quote(item)));
    }
    if (v < 0) throw UsageError(msg("--prompt-ids: token id ", v, " is negative"));
    ids.push_back(v);
    start = end + 1;
  }
  return ids;
}

// Length of the longest prefix of s that does not end inside a UTF-8 sequence.
size_t complete_utf8_prefix(const std::string& s) {
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

int64_t sample(at::Tensor logits, const GenerateCli& o, at::Generator& gen) {
  logits = logits.to(at::kCPU, at::kFloat);
  if (o.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    const at::Tensor kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    const at::Tensor cum = sorted.softmax(0).cumsum(0);
    // Drop a token when the tokens before it already reach top_p (keeps >= 1).
    at::Tensor drop = (cum - sorted.softmax(0)) >= o.top_p;
    logits = logits.index_fill(0, order.masked_select(drop), -std::numeric_limits<float>::infinity());
  }
  return at::multinomial(logits.softmax(0), 1, false, gen).item<int64_t>();
}

int run_generate(const GenerateCli& o) {
  set_threads(o.threads);
  if (o.has_prompt == !o.prompt_ids.empty()) {
    throw UsageError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3");
  }
  RECAST_CHECK(o.max_tokens >= 0, "--max-tokens: expected >= 0, found ", o.max_tokens);
  RECAST_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p: expected in (0, 1], found ", o.top_p);
  const c10::Device device = select_device(o.device);
  models::ModelPtr model = models::load_model(o.model);
  if (model->task() != models::Task::CausalLM) {
    throw UsageError(msg("--model ", o.model, " is not a language model (", model->arch(), ")"));
  }
  std::unique_ptr<io::Tokenizer> tok = tokenizer_of_checkpoint(o.model);
  if (o.has_prompt && !tok) {
    throw Error(msg(o.model, ": no tokenizer files (vocab.json + merges.txt or "
                             "tokenizer_config.json); use --prompt-ids"));
  }
  std::vector<int64_t> prompt = o.has_prompt ? tok->encode(o.prompt) : parse_ids(o.prompt_ids);
  const int64_t eos = tok ? tok->eos_id()
                          : models::cfg_int(model->config(), "eos_token_id", -1);
  if (prompt.empty()) {
    if (eos < 0) throw UsageError("empty prompt and no <|endoftext|> token to start from");
    prompt.push_back(eos);  // unconditional generation, as GPT-2 does
  }
  const nlohmann::json& c = model->config();
  const int64_t context = c.contains("n_positions") ? models::cfg_int(c, "n_positions")
                          : models::cfg_int(c, "max_position_embeddings", 2048);
  model->to(device);
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  models::KVCache cache;
  models::Batch batch;
  batch.input_ids = at::tensor(prompt, at::kLong).view({1, -1}).to(device);
  std::vector<int64_t> generated;
  std::string text;
  size_t printed = 0;
  auto stream = [&](bool final) {
    if (o.json || !tok) return;
    text = tok->decode(generated);
    const size_t upto = final ? text.size() : complete_utf8_prefix(text);
    if (upto > printed) {
      std::fwrite(text.data() + printed, 1, upto - printed, stdout);
      std::fflush(stdout);
      printed = upto;
    }
  };
  if (!o.json && tok) {
    std::fwrite(tok->decode(prompt).data(), 1, tok->decode(prompt).size(), stdout);
  }
  for (int64_t i = 0; i < o.max_tokens; ++i) {
    if (cache.length() + batch.input_ids.size(1) > context) {
      // Past the model's context: keep the last half and prefill it afresh
      // (a sliding window; each slide costs one forward over context/2 tokens).
      std::vector<int64_t> all = prompt;
      all.insert(all.end(), generated.begin(), generated.end());
      const auto keep = static_cast<ptrdiff_t>(std::max<int64_t>(1, context / 2));
      std::vector<int64_t> tail(all.end() - std::min<ptrdiff_t>(keep, static_cast<ptrdiff_t>(all.size())), all.end());
      cache = models::KVCache();
      batch.input_ids = at::tensor(tail, at::kLong).view({1, -1}).to(device);
      log::debug("context of ", context, " tokens full: sliding to the last ", tail.size());
    }
    const at::Tensor logits = model->forward(batch, nullptr, &cache);
    const int64_t next = sample(logits[0][-1], o, gen);
    if (next == eos && !o.ignore_eos) break;
    generated.push_back(next);
    stream(false);
    batch.input_ids = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong).device(device));
  }
  stream(true);
  if (o.json) {
    nlohmann::json j = {{"prompt_ids", prompt}, {"ids", generated}};
    if (tok) j["text"] = tok->decode(generated);
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else if (tok) {
    std::printf("\n");
  } else {
    for (size_t i = 0; i < generated.size(); ++i) std::printf("%s%lld", i ? "," : "", static_cast<long long>(generated[i]));
    std::printf("\n");
  }
  return 0;
}

}  // namespace

Runner add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCli>();
  auto* cmd = app.add_subcommand("generate", verb_info("generate").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory of a language model")->required();
  auto* prompt = cmd->add_option("--prompt", o->prompt, "Prompt text (needs the tokenizer)");
  cmd->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids: 1,2,3 (no tokenizer needed)");
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate (default 100)");
  cmd->add_option("--temperature", o->temperature, "Sampling temperature; 0 = greedy (default 1)");
  cmd->add_option("--top-k", o->top_k, "Sample from the K most likely tokens (default 0: all)");
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling threshold (default 1: off)");
  cmd->add_option("--seed", o->seed, "Sampling seed (default 0)");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep going past <|endoftext|>");
  cmd->add_flag("--json", o->json, "Print {\"prompt_ids\", \"ids\", \"text\"} instead of streaming");
  return [o, prompt] {
    o->has_prompt = prompt->count() > 0;
    return run_generate(*o);
  };
}

}  // namespace recast::cli
