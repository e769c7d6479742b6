#!/bin/sh
# Security gate: recast never unpickles a user's file, so no LibTorch loader
# that unpickles (torch::load, torch::jit::load, torch::pickle_load,
# jit::import_ir_module) may be called anywhere in src/. Comment lines that name
# them are allowed.
src=${1:-$(dirname "$0")/../src}
hits=$(grep -rnE 'torch::(jit::)?load *\(|pickle_load *\(|import_ir_module *\(' "$src" |
       grep -vE '^[^:]+:[0-9]+:[[:space:]]*//')
if [ -n "$hits" ]; then
  echo "unpickling loader called:"
  echo "$hits"
  exit 1
fi
echo "no unpickling loaders in $src"
