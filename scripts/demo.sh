#!/usr/bin/env bash
# The demo `make demo` runs after building. For now it shows the checkpoint
# layer every recast stands on: write a GPT-2-shaped checkpoint, inspect it,
# re-shard it, inspect the shards, and watch a pickle file get refused.
# Later issues grow this into the end-to-end demo (pretrain, recast, fine-tune).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
out=out/demo
rm -rf "$out"
mkdir -p "$out"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "write a GPT-2-shaped checkpoint (6 layers x 256 wide, random weights)"
"$build/bench/make_checkpoint" "$out/gpt2-mini.safetensors" --layers 6 --width 256 --vocab 8192

step "recast inspect (reads the header only)"
"$build/recast" inspect "$out/gpt2-mini.safetensors" --summary
"$build/recast" inspect "$out/gpt2-mini.safetensors" | sed -n '9,16p'

step "recast repack into 4 MB shards, cast to bf16"
"$build/recast" repack "$out/gpt2-mini.safetensors" "$out/gpt2-mini-bf16" --max-shard-size 4MB --dtype bf16
ls -l "$out/gpt2-mini-bf16"

step "recast inspect the sharded directory (validated against its index)"
"$build/recast" inspect "$out/gpt2-mini-bf16" --summary

step "recast inspect --json (first lines)"
# (to a file first: head closing the pipe early would fail the script under pipefail)
"$build/recast" inspect "$out/gpt2-mini-bf16" --json > "$out/inspect.json"
head -n 12 "$out/inspect.json"

step "a pickle checkpoint is refused by content, whatever its name"
printf '\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19' > "$out/model.safetensors"
set +e
"$build/recast" inspect "$out/model.safetensors"
echo "exit code: $?"
set -e

step "recast list"
"$build/recast" list
