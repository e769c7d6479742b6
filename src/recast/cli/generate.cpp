// recast generate --model DIR (--prompt TEXT ... | --prompt-ids 1,2,3 ...)
//                 [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
//                 [--seed S] [--json]
// Autoregressive sampling with the KV cache / recurrent state
// (models/generate.h); an encoder-decoder reads the prompt with its encoder
// and generates the decoder's tokens. One text prompt streams to stdout as it is generated;
// several (repeat --prompt) run as one left-padded batch and print in order.
// --json prints {"prompt_ids": [...], "ids": [...], "text": "..."} per prompt,
// one line each. With --prompt-ids it needs no tokenizer (ids in, ids out).

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/models/generate.h"
#include "recast/models/seq2seq.h"

#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <mutex>

namespace recast::cli {
namespace {

struct GenerateCli {
  std::string model, device = "cpu", dtype = "f32";
  std::vector<std::string> prompts, prompt_ids;
  int64_t max_tokens = 100, top_k = 0;
  double temperature = 1.0, top_p = 1.0;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false, ignore_eos = false, no_cuda_graph = false;
  int64_t stream_every = 8;
  // The sampling options as given on the command line: with --temperature 0
  // (greedy) none of them applies.
  std::vector<const CLI::Option*> sampling;
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

int run_generate(const GenerateCli& o) {
  set_threads(o.threads);
  if (o.prompts.empty() == o.prompt_ids.empty()) {
    throw UsageError("give --prompt TEXT or --prompt-ids 1,2,3 (either may be repeated), not both");
  }
  RECAST_CHECK(o.max_tokens >= 0, "--max-tokens: expected >= 0, found ", o.max_tokens);
  if (o.temperature == 0) {
    for (const CLI::Option* opt : o.sampling) {
      if (opt->count() > 0) {
        throw UsageError(msg(opt->get_name(), " does not apply with --temperature 0 (greedy decoding ",
                             "takes the most likely token); leave it out, or sample with a temperature > 0"));
      }
    }
  }
  RECAST_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p: expected in (0, 1], found ", o.top_p);
  const c10::Device device = select_device(o.device);
  const c10::ScalarType dtype = parse_dtype(o.dtype);
  check_compute_dtype(dtype, device);
  models::LoadOptions load;
  load.dtype = dtype;
  models::ModelPtr model = models::load_model(o.model, load);
  const bool seq2seq = model->task() == models::Task::Seq2SeqLM;
  if (model->task() != models::Task::CausalLM && !seq2seq) {
    throw UsageError(msg("--model ", o.model, " is not a language model (", model->arch(), ")"));
  }
  std::unique_ptr<io::Tokenizer> tok = tokenizer_of_checkpoint(o.model);
  const bool text_prompts = !o.prompts.empty();
  if (text_prompts && !tok) {
    throw Error(msg(o.model, ": no tokenizer files (vocab.json + merges.txt or "
                             "tokenizer_config.json); use --prompt-ids"));
  }
  const int64_t eos = tok ? tok->eos_id()
                          : models::cfg_int(model->config(), "eos_token_id", -1);
  std::vector<std::vector<int64_t>> prompts;
  for (const std::string& p : text_prompts ? o.prompts : o.prompt_ids) {
    prompts.push_back(text_prompts ? tok->encode(p) : parse_ids(p));
    if (prompts.back().empty()) {
      if (eos < 0) throw UsageError("empty prompt and no <|endoftext|> token to start from");
      prompts.back().push_back(eos);  // unconditional generation, as GPT-2 does
    }
  }
  models::GenerateOptions g;
  g.sampling = {o.temperature, o.top_k, o.top_p};
  g.max_tokens = o.max_tokens;
  g.eos = o.ignore_eos ? -1 : eos;
  g.pad = seq2seq ? static_cast<const models::Seq2SeqModel&>(*model).pad_token()
                  : std::max<int64_t>(eos, 0);
  g.context = model->context_length();
  g.cuda_graph = !o.no_cuda_graph;
  g.stream_every = o.stream_every;
  model->to(device, dtype);
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  if (device.is_cuda()) {
    // Sampling on the device (CUDA graph steps): its generator, seeded.
    at::Generator device_gen = at::globalContext().defaultGenerator(device);
    {
      std::lock_guard<std::mutex> lock(device_gen.mutex());
      device_gen.set_current_seed(o.seed);
    }
    g.device_gen = device_gen;
  }

  // One prompt as text: stream it as it comes (whole UTF-8 characters only).
  const bool streaming = !o.json && tok && prompts.size() == 1;
  std::vector<int64_t> so_far;
  size_t printed = 0;
  auto stream = [&](bool final) {
    const std::string text = tok->decode(so_far);
    const size_t upto = final ? text.size() : complete_utf8_prefix(text);
    if (upto > printed) {
      std::fwrite(text.data() + printed, 1, upto - printed, stdout);
      std::fflush(stdout);
      printed = upto;
    }
  };
  // A decoder continues its prompt, which is printed first; an
  // encoder-decoder's output is a sequence of its own.
  if (streaming && !seq2seq) {
    const std::string head = tok->decode(prompts[0]);
    std::fwrite(head.data(), 1, head.size(), stdout);
  }
  const auto generated = models::generate(*model, prompts, g, gen, [&](size_t, int64_t id) {
    if (!streaming) return;
    so_far.push_back(id);
    stream(false);
  });
  if (streaming) {
    stream(true);
    std::printf("\n");
    return 0;
  }
  for (size_t r = 0; r < prompts.size(); ++r) {
    if (o.json) {
      nlohmann::json j = {{"prompt_ids", prompts[r]}, {"ids", generated[r]}};
      if (tok) j["text"] = tok->decode(generated[r]);
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else if (tok) {
      std::cout << (r ? "\n" : "") << (seq2seq ? std::string() : tok->decode(prompts[r]))
                << tok->decode(generated[r]) << "\n";
    } else {
      for (size_t i = 0; i < generated[r].size(); ++i) {
        std::cout << (i ? "," : "") << generated[r][i];
      }
      std::cout << "\n";
    }
  }
  std::cout.flush();
  return 0;
}

}  // namespace

Runner add_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCli>();
  auto* cmd = app.add_subcommand("generate", verb_info("generate").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory of a language model")->required();
  cmd->add_option("--prompt", o->prompts,
                  "Prompt text (needs the tokenizer); repeat for a batch")
      ->allow_extra_args(false);
  cmd->add_option("--prompt-ids", o->prompt_ids,
                  "Prompt as token ids: 1,2,3 (no tokenizer needed); repeat for a batch")
      ->allow_extra_args(false);
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate (default 100)")
      ->check(integer_in(1, 1e9));
  cmd->add_option("--temperature", o->temperature, "Sampling temperature; 0 = greedy (default 1)")
      ->check(number_in(0, 1000));
  o->sampling.push_back(
      cmd->add_option("--top-k", o->top_k, "Sample from the K most likely tokens (default 0: all)")
          ->check(integer_in(0, 1e9)));
  o->sampling.push_back(
      cmd->add_option("--top-p", o->top_p, "Nucleus sampling threshold (default 1: off)")
          ->check(number_in(0, 1, true)));
  o->sampling.push_back(cmd->add_option("--seed", o->seed, "Sampling seed (default 0)"));
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--dtype", o->dtype, "f32, bf16 or f16 (default f32): the weights' dtype (a bf16 "
                                       "checkpoint loaded as bf16 is used in place, not copied)");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)")
      ->check(integer_in(0, 4096));
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep going past <|endoftext|>");
  cmd->add_flag("--no-cuda-graph", o->no_cuda_graph,
                "CUDA: step eagerly (sampling on the host) instead of replaying one CUDA graph per "
                "token (sampling on the device)");
  cmd->add_option("--stream-every", o->stream_every,
                  "CUDA graph steps: hand the new tokens to the host every N steps (default 8)")
      ->check(integer_in(1, 1e6));
  cmd->add_flag("--json", o->json,
                "Print {\"prompt_ids\", \"ids\", \"text\"} (one line per prompt) instead of streaming");
  return [o] { return run_generate(*o); };
}

}  // namespace recast::cli
