#!/usr/bin/env bash
# Loading a 1B-class checkpoint on the CPU: Llama-3.2-1B's config
# (bench/configs/llama-3.2-1b.json; random weights by the family's own init),
# bf16, sharded at 1 GB, then `recast forward` / `recast generate` on it in
# bf16 (weights adopted from the mapped shards) and in f32 (widened: a copy),
# peak RSS and wall time each (tools/peak_rss.py). Results:
# bench/results/DATE-cpu-load/ (override with OUT=...).
#   scripts/bench-load.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/recast-bench-load}
out=${OUT:-bench/results/$(date +%F)-cpu-load}
mkdir -p "$work" "$out"
ckpt=$work/llama-3.2-1b-bf16
if [[ ! -f $ckpt/model.safetensors.index.json ]]; then
  start=$SECONDS
  build/bench/make_checkpoint "$ckpt" --arch llama --config bench/configs/llama-3.2-1b.json \
    --dtype bf16 --max-shard-size 1GB
  echo "make_checkpoint: $((SECONDS - start)) s"
fi
ls -l "$ckpt" > "$out/checkpoint.txt"
rm -f "$out/load.jsonl"
python3 tools/peak_rss.py "$ckpt" "$out/load.jsonl" \
  -- inspect build/recast inspect "$ckpt" --summary \
  -- forward-bf16 build/recast forward --model "$ckpt" --input {inputs} --output {tmp}/o.safetensors --dtype bf16 -v \
  -- generate-bf16 build/recast generate --model "$ckpt" --prompt-ids 1,2,3,4 --max-tokens 8 --temperature 0 --dtype bf16 --json -v \
  -- forward-f32 build/recast forward --model "$ckpt" --input {inputs} --output {tmp}/o.safetensors --dtype f32 -v
{ echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(date -u +%FT%TZ)"; cat "$out/load.jsonl"; } > "$out/summary.txt"
cat "$out/summary.txt"
