// `recast-engine`: every verb, with LibTorch. Users run `recast`, which execs
// this binary for the verbs that need LibTorch.

#include "recast/cli/verbs.h"
#include "recast/core/signals.h"

#include <cstdlib>

int main(int argc, char** argv) {
  using namespace recast::cli;
  // Exact resume on the CPU needs every run to split its BLAS work the same
  // way. MKL (in PyTorch's own LibTorch) may lower its thread count under load
  // unless told not to, which changes reduction order and hence the bits.
  // (Must be set before MKL initialises; a user's own setting wins.)
  ::setenv("MKL_DYNAMIC", "FALSE", /*overwrite=*/0);
  // Before any thread exists: SIGINT / SIGTERM go to one watcher thread, never
  // to a compute thread in the middle of a kernel (core/signals.h).
  recast::signals::install();
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
                  {"plot", add_plot}});
}
