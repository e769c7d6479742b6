#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the GPU runs of docs/results.md.
#   scripts/gpu-train.sh bench    GPT-2-small training throughput, recast vs transformers
#   scripts/gpu-train.sh lm       GPT-2-style LM on State of the Union (byte level)
#   scripts/gpu-train.sh resnet   ResNet-18 on Fashion-MNIST
#   scripts/gpu-train.sh vit      ViT-tiny (patch 4) on Fashion-MNIST
# Needs .gpu-data/ (scripts/gpu-data.sh) and .debs/ carried along. Results go
# to $OUT/<job>/ (metrics.jsonl, eval JSON, manifest, samples).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}
recast=build-gpu/recast
python=${PYTHON:-python3}
deps=/tmp/recast-deps
export RECAST_DATA_DIR=$PWD/.gpu-data
ln -sfn "$deps/usr/share/datasets/fashion-mnist" .gpu-data/fashion-mnist
runs=${RUNS:-/tmp/recast-runs}
mkdir -p "$runs"

keep() {  # job dir: copy the small files of a finished run into $OUT/job
  mkdir -p "$out/$1"
  cp "$2"/metrics.jsonl "$2"/recast_manifest.json "$2"/config.json "$out/$1/" 2>/dev/null || true
}

for job in "$@"; do
  echo "== $job"
  case $job in
    bench)
      # Same model, batch, dtype and optimizer step: GPT-2 small (124M), batch
      # 8 x 1024 tokens, bf16 autocast, AdamW (betas 0.9/0.95, wd 0.1 on
      # matrices), clip 1.0, one loss sync per step. 5 warm-up steps untimed.
      mkdir -p "$out/bench"
      "$python" tools/bench_train_hf.py --steps 30 --warmup-steps 5 --dtype bf16 \
        --json "$out/bench/hf.json" 2>&1 | grep -v loss_type | tail -2
      rm -rf "$runs/bench"
      "$recast" pretrain --arch gpt2 --set n_layer=12 --set n_embd=768 --set n_head=12 \
        --set vocab_size=50257 --set n_positions=1024 --data sotu --seq-len 1024 \
        --batch-size 8 --steps 35 --warmup 5 --log-every 5 --eval-batches 2 --bf16 \
        --device cuda --no-progress --out "$runs/bench" 2>&1 | tail -2
      cp "$runs/bench/metrics.jsonl" "$out/bench/recast-metrics.jsonl"
      "$python" - "$out/bench" <<'PY'
import json, sys
d = sys.argv[1]
hf = json.load(open(f"{d}/hf.json"))
rows = [json.loads(l) for l in open(f"{d}/recast-metrics.jsonl") if '"train"' in l]
timed = [r for r in rows if r["step"] > 5]  # windows of 5 steps after the 5 warm-up steps
tps = sum(r["tokens_per_s"] for r in timed) / len(timed)
res = {"recast_tokens_per_s": tps, "hf_tokens_per_s": hf["tokens_per_s"],
       "ratio": tps / hf["tokens_per_s"], "windows": len(timed), "hf": hf}
json.dump(res, open(f"{d}/summary.json", "w"), indent=2)
print(f"recast {tps:,.0f} tok/s, transformers {hf['tokens_per_s']:,.0f} tok/s, ratio {tps / hf['tokens_per_s']:.3f}")
PY
      ;;
    lm)
      rm -rf "$runs/lm"
      "$recast" pretrain --arch gpt2 --set n_layer=8 --set n_embd=512 --set n_head=8 \
        --data sotu --seq-len 512 --batch-size 64 --steps ${LM_STEPS:-2500} --lr 1e-3 --warmup 200 \
        --eval-every 500 --eval-batches 20 --save-every 1000 --bf16 --device cuda \
        --no-progress --out "$runs/lm" 2>&1 | tail -3
      keep lm "$runs/lm"
      "$recast" eval --model "$runs/lm" --data sotu --split test --device cuda --bf16 \
        --batch-size 64 --json > "$out/lm/eval-sotu-test.json"
      "$recast" eval --model "$runs/lm" --data moby-dick --split all --device cuda --bf16 \
        --batch-size 64 --json > "$out/lm/eval-moby-dick.json"
      "$recast" generate --model "$runs/lm" --prompt "The state of the Union is" \
        --max-tokens 300 --temperature 0.8 --top-k 40 --device cuda > "$out/lm/sample.txt"
      grep -h -E '"(perplexity|bits_per_byte)"' "$out"/lm/eval-*.json
      ;;
    resnet)
      rm -rf "$runs/resnet"
      "$recast" pretrain --arch resnet18 --data fashion-mnist --batch-size 256 \
        --steps ${RESNET_STEPS:-2100} --lr 2e-3 --weight-decay 0.05 --warmup 100 --eval-every 500 \
        --eval-batches 30 --bf16 --device cuda --no-progress --out "$runs/resnet" 2>&1 | tail -3
      keep resnet "$runs/resnet"
      "$recast" eval --model "$runs/resnet" --data fashion-mnist --split test --device cuda \
        --batch-size 500 --json > "$out/resnet/eval-test.json"
      grep -h '"accuracy"' "$out/resnet/eval-test.json"
      ;;
    vit)
      rm -rf "$runs/vit"
      "$recast" pretrain --arch vit_tiny_patch16_224 --set patch_size=4 --data fashion-mnist \
        --batch-size 256 --steps ${VIT_STEPS:-2100} --lr 1e-3 --weight-decay 0.05 --warmup 200 \
        --eval-every 500 --eval-batches 30 --bf16 --device cuda --no-progress \
        --out "$runs/vit" 2>&1 | tail -3
      keep vit "$runs/vit"
      "$recast" eval --model "$runs/vit" --data fashion-mnist --split test --device cuda \
        --batch-size 500 --json > "$out/vit/eval-test.json"
      grep -h '"accuracy"' "$out/vit/eval-test.json"
      ;;
    *) echo "gpu-train: unknown job '$job' (bench, lm, resnet, vit)" >&2; exit 2 ;;
  esac
done
