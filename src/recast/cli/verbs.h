#pragma once

// The verbs of the recast CLI. Each verb lives in its own file and defines its
// options once: an options struct, one registration function that declares them
// to CLI11 (which also writes --help), and a run function.
//
// Two executables share this table. `recast` is the front: it does not link
// LibTorch (whose start-up alone costs ~0.65 s here), answers --help,
// --version and the torch-free verbs itself, and hands every other verb to
// `recast-engine` beside it (exec, same arguments).

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace recast::cli {

// Returned by a verb's registration: runs the verb after parsing; returns the
// exit code. Errors are thrown (recast::Error -> 1, recast::UsageError -> 2).
using Runner = std::function<int()>;

struct VerbInfo {
  const char* name;
  const char* summary;
  bool needs_torch;  // handled by recast-engine
};

inline constexpr VerbInfo kVerbs[] = {
    {"inspect",
     "Show the tensors, dtypes, shapes, parameter count and metadata of a checkpoint "
     "(file or directory)",
     false},
    {"forward",
     "Run a model on inputs from a safetensors file; write logits and named "
     "intermediates",
     true},
    {"list", "List the registered model families and recipes", true},
    {"repack", "Rewrite a checkpoint's weights as (sharded) safetensors, optionally cast", true},
    {"pretrain", "Train a model from scratch on a data set (--arch, --data, --out)", true},
    {"finetune", "Fine-tune a checkpoint on a data set (new classifier head when needed)", true},
    {"eval", "Evaluate a checkpoint: perplexity and bits per byte, or accuracy and confusion", true},
    {"generate", "Generate text from a language model with the KV cache", true},
    {"convert", "Recast a checkpoint with a recipe (t2r, tcnn, factorize, merge, refiner; see 'recast list')", true},
    {"analyze",
     "Show a T-CNN's or a refined ViT's attention for one image: gates, peaks, distances; draw the maps (PNG/SVG)",
     true},
    {"bench", "Measure: 'bench decode' = ms per token and memory after a long prompt", true},
    {"plot", "Draw training curves from a metrics.jsonl file as PNG or SVG", false},
    {"tokenize", "Print the token ids of a text as a checkpoint's tokenizer gives them", true},
    {"tokenizer", "'tokenizer train': train a SentencePiece tokenizer on a text data set", true},
    {"launch",
     "Start N local ranks of a training verb with torchrun's variables (data parallelism without Python)",
     false},
};

const VerbInfo& verb_info(const std::string& name);

using AddVerb = Runner (*)(CLI::App& app);
struct VerbImpl {
  const char* name;
  AddVerb add;
};

// Parses the command line and runs the chosen verb; verbs of kVerbs without an
// implementation in `impls` are listed in --help but cannot run here.
int run_cli(int argc, char** argv, const std::vector<VerbImpl>& impls);

Runner add_forward(CLI::App& app);
Runner add_inspect(CLI::App& app);
Runner add_list(CLI::App& app);
Runner add_plot(CLI::App& app);
Runner add_repack(CLI::App& app);
Runner add_pretrain(CLI::App& app);
Runner add_finetune(CLI::App& app);
Runner add_eval(CLI::App& app);
Runner add_generate(CLI::App& app);
Runner add_convert(CLI::App& app);
Runner add_bench(CLI::App& app);
Runner add_analyze(CLI::App& app);
Runner add_tokenize(CLI::App& app);
Runner add_tokenizer(CLI::App& app);
Runner add_launch(CLI::App& app);
// `recast launch [its options] VERB ARGS...`: VERB ARGS... are the ranks'
// command, not launch's arguments. Keeps them aside and returns how many of
// argv's leading arguments are launch's own (the rest is not parsed).
int split_launch_command(int argc, char** argv);
const std::vector<std::string>& launch_command();

// A CLI11 check: the value is a finite number in [lo, hi] (lo excluded with
// open_lo), integer-valued with `integer`; the message names what was
// expected and what was found ("--lr: expected a finite number in (0, 10],
// found nan"). Bad values are usage errors (exit 2) before any work starts.
CLI::Validator number_in(double lo, double hi, bool open_lo = false, bool integer = false);
inline CLI::Validator integer_in(double lo, double hi) { return number_in(lo, hi, false, true); }

// Checks an output directory option before any work: where the path exists it
// must be a directory (not a file, FIFO, dangling symlink or loop), empty with
// `must_be_empty`; its parent must exist. UsageError naming `option`.
void check_output_dir(const std::string& path, const std::string& option, bool must_be_empty);

// Human-readable sizes for tables: 1.5 GB, 12.0 MB, 512 B.
std::string human_bytes(uint64_t bytes);
// 124,439,808
std::string with_commas(uint64_t n);

}  // namespace recast::cli
