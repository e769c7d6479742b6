#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the T2R experiment and the
# decode benchmark of docs/results.md. Results go to $OUT/t2r/.
#   scripts/gpu-t2r.sh experiment   teacher vs T2R (+/- attention transfer) vs from scratch vs elu1
#   scripts/gpu-t2r.sh decode       ms/token and memory vs context, T2R vs softmax + KV cache
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}/t2r
recast=build-gpu/recast
python=${PYTHON:-python3}
export RECAST_DATA_DIR=$PWD/.gpu-data
ln -sfn /tmp/recast-deps/usr/share/datasets/fashion-mnist .gpu-data/fashion-mnist
runs=${RUNS:-/tmp/recast-runs}
N=${N:-500}
TEACHER_STEPS=${TEACHER_STEPS:-1500}
mkdir -p "$out" "$runs"
gpt=(--set n_layer=8 --set n_embd=512 --set n_head=8)
common=(--data sotu --seq-len 512 --batch-size 64 --bf16 --device cuda --no-progress --eval-batches 20)

evaluate() {  # name dir
  for d in sotu moby-dick; do
    split=test; [[ $d == moby-dick ]] && split=all
    "$recast" eval --model "$2" --data "$d" --split $split --device cuda --bf16 --batch-size 64 \
      --json > "$out/$1-eval-$d.json"
  done
  [[ -f $2/metrics.jsonl ]] && cp "$2/metrics.jsonl" "$out/$1-metrics.jsonl"
  [[ -f $2/recast_manifest.json ]] && cp "$2/recast_manifest.json" "$out/$1-manifest.json"
  echo "$1: $(grep -h perplexity "$out/$1"-eval-*.json | tr -d ' \n')"
}

for job in "$@"; do
  case $job in
    experiment)
      if [[ ! -f $runs/lm/model.safetensors ]]; then
        rm -rf "$runs/lm"
        "$recast" pretrain --arch gpt2 "${gpt[@]}" "${common[@]}" --steps "$TEACHER_STEPS" --lr 1e-3 \
          --warmup 200 --out "$runs/lm" 2>&1 | tail -1
      fi
      evaluate teacher "$runs/lm"
      for variant in t2r t2r-transfer elu1; do
        rm -rf "$runs/conv-$variant" "$runs/ft-$variant"
        fm=t2r; extra=()
        [[ $variant == elu1 ]] && fm=elu1
        [[ $variant == t2r-transfer ]] && extra=(--data sotu --seq-len 512 --batch-size 16 --transfer-steps 300)
        "$recast" convert --recipe t2r --model "$runs/lm" --out "$runs/conv-$variant" --feature-map $fm \
          --feature-dim 64 --device cuda "${extra[@]}" > "$out/convert-$variant.txt" 2>&1
        cp "$runs/conv-$variant/recast_manifest.json" "$out/convert-$variant-manifest.json"
        evaluate "converted-$variant" "$runs/conv-$variant"
        "$recast" finetune --model "$runs/conv-$variant" "${common[@]}" --steps "$N" --lr 5e-4 \
          --warmup 50 --out "$runs/ft-$variant" 2>&1 | tail -1
        evaluate "finetuned-$variant" "$runs/ft-$variant"
      done
      t2r_cfg='{"feature_map":"t2r","feature_dim":64,"eps":0.01,"chunk":64,"layers":[0,1,2,3,4,5,6,7]}'
      for steps in "$N" "$TEACHER_STEPS"; do
        rm -rf "$runs/scratch-$steps"
        "$recast" pretrain --arch gpt2 "${gpt[@]}" --set "recast_t2r=$t2r_cfg" "${common[@]}" \
          --steps "$steps" --lr 1e-3 --warmup 200 --out "$runs/scratch-$steps" 2>&1 | tail -1
        evaluate "scratch-t2r-$steps" "$runs/scratch-$steps"
      done
      ;;
    decode)
      rm -rf "$runs/dec-softmax" "$runs/dec-t2r"
      # GPT-2 small shape with 33k positions, briefly trained (weights do not matter for speed).
      "$recast" pretrain --arch gpt2 --set n_layer=12 --set n_embd=768 --set n_head=12 \
        --set n_positions=33000 --data sotu --seq-len 256 --batch-size 8 --steps 2 --device cuda \
        --no-progress --eval-batches 1 --out "$runs/dec-softmax" 2>&1 | tail -1
      "$recast" convert --recipe t2r --model "$runs/dec-softmax" --out "$runs/dec-t2r" --device cuda \
        > /dev/null 2>&1
      : > "$out/decode.jsonl"
      for batch in 1 32; do
        for ctx in 1024 4096 16384 32000; do
          for m in softmax t2r; do
            timeout 120 "$recast" bench decode --model "$runs/dec-$m" --context $ctx --new-tokens 64 \
              --batch $batch --device cuda --dtype bf16 --json >> "$out/decode.jsonl" 2> "$out/decode-err.txt" ||
              echo "{\"attention\": \"$m\", \"batch\": $batch, \"context\": $ctx, \"error\": \"$(tail -1 "$out/decode-err.txt" | tr -d '"')\"}" >> "$out/decode.jsonl"
          done
        done
      done
      "$python" - "$out/decode.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    if "error" in r:
        print(f'{r["attention"]:8s} B={r["batch"]:<3d} ctx={r["context"]:<6d} error: {r["error"]}')
    else:
        print(f'{r["attention"]:8s} B={r["batch"]:<3d} ctx={r["context"]:<6d} {r["ms_per_token"]:8.3f} ms/token  peak {r["peak_memory_mb"]:9.0f} MB  cache {r["cache_mb"]:9.1f} MB')
PY
      ;;
    *) echo "gpu-t2r: unknown job '$job' (experiment, decode)" >&2; exit 2 ;;
  esac
done
