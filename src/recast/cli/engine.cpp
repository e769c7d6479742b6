// `recast-engine`: every verb, with LibTorch. Users run `recast`, which execs
// this binary for the verbs that need LibTorch.

#include "recast/cli/verbs.h"
#include "recast/core/signals.h"

#include <cstdlib>
#include <string>

namespace {

// Training on the CPU (pretrain / finetune without --device cuda...).
bool cpu_training(int argc, char** argv) {
  if (argc < 2) return false;
  const std::string verb = argv[1];
  if (verb != "pretrain" && verb != "finetune") return false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) return std::string(argv[i + 1]) == "cpu";
    if (a.rfind("--device=", 0) == 0) return a == "--device=cpu";
  }
  return true;  // the default device
}

}  // namespace

int main(int argc, char** argv) {
  using namespace recast::cli;
  // Exact resume on the CPU needs every run to compute its BLAS products the
  // same way. MKL (in PyTorch's own LibTorch; Debian's uses OpenBLAS) may
  // change thread count under load unless told not to, and picks code paths
  // at run time: on the GPU machine, 14 of 96 interrupted-and-resumed runs
  // under load ended with different bits with MKL's default, 0 of 96 with
  // MKL_CBWR=COMPATIBLE (docs/training.md). So CPU training asks MKL for its
  // reproducible path. Both must be set before MKL initialises; a user's own
  // setting wins (MKL_CBWR=AUTO: faster, resume no longer bit-exact).
  recast::signals::install();  // SIGINT / SIGTERM: clean stop, no temp files left
  ::setenv("MKL_DYNAMIC", "FALSE", /*overwrite=*/0);
  if (cpu_training(argc, argv)) ::setenv("MKL_CBWR", "COMPATIBLE", /*overwrite=*/0);
  return run_cli(argc, argv,
                 {{"forward", add_forward},
                  {"inspect", add_inspect},
                  {"list", add_list},
                  {"repack", add_repack},
                  {"pretrain", add_pretrain},
                  {"finetune", add_finetune},
                  {"eval", add_eval},
                  {"generate", add_generate},
                  {"convert", add_convert},
                  {"bench", add_bench},
                  {"analyze", add_analyze},
                  {"plot", add_plot},
                  {"tokenize", add_tokenize},
                  {"tokenizer", add_tokenizer}});
}
