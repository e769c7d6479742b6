// `recast-engine`: every verb, with LibTorch. Users run `recast`, which execs
// this binary for the verbs that need LibTorch.

#include "recast/cli/verbs.h"

int main(int argc, char** argv) {
  using namespace recast::cli;
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
