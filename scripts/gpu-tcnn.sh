#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the T-CNN experiment and
# benchmark of docs/results.md. Results go to $OUT/tcnn/.
#   scripts/gpu-tcnn.sh experiment  Fashion-MNIST ResNet-18 -> T-CNN (layer4; layer3+4)
#                                   -> fine-tune, against the CNN fine-tuned the same
#                                   way and the hybrid trained from scratch: clean
#                                   accuracy, corruption accuracy and mCE, time
#   scripts/gpu-tcnn.sh geometry    the same question at ImageNet's geometry (issue 24):
#                                   ResNet-50 on Fashion-MNIST resized to IMAGE_SIZE (112 or
#                                   224: the last stage sees 4x4 / 7x7 maps), random crops and
#                                   flips; per seed (SEEDS, three by default): the CNN
#                                   pretrained, then (a) fine-tuned, (b) T-CNN of layer4 and of
#                                   layer3+4 fine-tuned, (c) the layer3+4 hybrid from scratch
#                                   for the whole budget, (d) T-CNN converted from a CNN
#                                   pretrained for half the budget, fine-tuned for the rest;
#                                   clean and corruption accuracy (mCE vs (a)), times, gates
#                                   and distances (metrics), attention maps (analyze).
#                                   SMOKE=1: a tiny ResNet-18 at 32 px on the CPU, a few
#                                   steps, to check the script (no numbers).
#   scripts/gpu-tcnn.sh bench       ConvAttention (each content path) vs conv2d
#                                   (bench_conv_attention) and timm's GPSA vs
#                                   PyTorch's conv2d (tools/bench_gpsa.py), one run
# Results are written to $RES (default /tmp/recast-tcnn) and, after each step,
# packed into $OUT/tcnn.tgz (the device returns a limited number of files).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RES:-/tmp/recast-tcnn}
recast=build-gpu/recast
python=${PYTHON:-python3}
if [[ -n ${SMOKE:-} ]]; then  # the CPU machine: scripts/fetch-data.sh fashion-mnist
  export RECAST_DATA_DIR=$PWD/data
else
  export RECAST_DATA_DIR=$PWD/.gpu-data
  mkdir -p .gpu-data
  ln -sfn /tmp/recast-deps/usr/share/datasets/fashion-mnist .gpu-data/fashion-mnist
fi
runs=${RUNS:-/tmp/recast-runs}
BASE_STEPS=${BASE_STEPS:-2100}  # ~10 epochs at batch 256 (54,000 training images)
FT_STEPS=${FT_STEPS:-633}       # 3 epochs
user_seeds=${SEEDS:-}
SEEDS=${SEEDS:-"0 1"}           # fine-tuning (and scratch) seeds
BASE_SEED=${BASE_SEED:-0}       # the pretrained CNN's
mkdir -p "$out" "$runs"
[[ -n ${OUT:-} ]] && mkdir -p "$OUT"
data=(--data fashion-mnist --batch-size 256 --bf16 --device cuda --no-progress --eval-batches 24)
ft=("${data[@]}" --steps "$FT_STEPS" --lr 5e-4 --warmup 30 --weight-decay 0.05 --eval-every 211)
l34='["layer3.0.conv1","layer3.0.conv2","layer3.1.conv1","layer3.1.conv2","layer4.0.conv1","layer4.0.conv2","layer4.1.conv1","layer4.1.conv2"]'

evaluate() {  # name dir [baseline dir]
  "$recast" eval --model "$2" --data fashion-mnist --split test --device cuda --batch-size 500 \
    --json > "$out/$1-eval.json"
  local base=()
  [[ $# -ge 3 ]] && base=(--baseline "$3")
  "$recast" eval --model "$2" --data fashion-mnist --split test --device cuda --batch-size 500 \
    --corrupt all "${base[@]}" --json > "$out/$1-corrupt.json" 2> "$out/$1-corrupt.err"
  cp "$2/metrics.jsonl" "$out/$1-metrics.jsonl" 2>/dev/null || true
  echo "$1: clean $(grep -m1 '"accuracy"' "$out/$1-eval.json" | tr -d ' ,') mce $(grep '"mce"' "$out/$1-corrupt.json" | tr -d ' ,')"
  pack
}

pack() { [[ -n ${OUT:-} ]] && tar -czf "$OUT/tcnn.tgz" -C "$out" . || true; }

timed() {  # name command...: runs it, records the wall time
  local name=$1 t0 t1
  shift
  t0=$EPOCHREALTIME
  "$@" > "$out/$name.log" 2>&1 || { tail -5 "$out/$name.log"; return 1; }
  t1=$EPOCHREALTIME
  echo "{\"run\": \"$name\", \"wall_s\": $(awk "BEGIN { print $t1 - $t0 }")}" >> "$out/times.jsonl"
}

for job in "$@"; do
  case $job in
    experiment)
      touch "$out/times.jsonl"
      rm -rf "$runs/tc-base"
      timed "base-$BASE_SEED" "$recast" pretrain --arch resnet18 "${data[@]}" --steps "$BASE_STEPS" \
        --lr 2e-3 --weight-decay 0.05 --warmup 100 --eval-every 700 --seed "$BASE_SEED" \
        --out "$runs/tc-base"
      evaluate "base-$BASE_SEED" "$runs/tc-base"
      for seed in $SEEDS; do
        rm -rf "$runs/tc-cnn-$seed"
        timed "cnn-ft-$seed" "$recast" finetune --model "$runs/tc-base" "${ft[@]}" --seed "$seed" \
          --out "$runs/tc-cnn-$seed"
        evaluate "cnn-ft-$seed" "$runs/tc-cnn-$seed"
        for v in l4 l34; do
          layers='layer4\.'
          [[ $v == l34 ]] && layers='layer[34]\.'
          rm -rf "$runs/tc-conv-$v" "$runs/tc-$v-$seed"
          "$recast" convert --recipe tcnn --model "$runs/tc-base" --out "$runs/tc-conv-$v" \
            --layers "$layers" --data fashion-mnist > "$out/convert-$v.txt" 2>&1
          cp "$runs/tc-conv-$v/recast_manifest.json" "$out/convert-$v-manifest.json"
          timed "tcnn-$v-ft-$seed" "$recast" finetune --model "$runs/tc-conv-$v" "${ft[@]}" \
            --seed "$seed" --out "$runs/tc-$v-$seed"
          evaluate "tcnn-$v-ft-$seed" "$runs/tc-$v-$seed" "$runs/tc-cnn-$seed"
        done
        # The hybrid from scratch, for the base's and the fine-tune's steps together.
        rm -rf "$runs/tc-scratch-$seed"
        timed "scratch-l34-$seed" "$recast" pretrain --arch resnet18 --set "recast_tcnn={\"layers\":$l34}" \
          "${data[@]}" --steps $((BASE_STEPS + FT_STEPS)) --lr 2e-3 --weight-decay 0.05 --warmup 100 \
          --eval-every 700 --seed "$seed" --out "$runs/tc-scratch-$seed"
        evaluate "scratch-l34-$seed" "$runs/tc-scratch-$seed" "$runs/tc-cnn-$seed"
      done
      first=${SEEDS%% *}
      "$recast" analyze --model "$runs/tc-l34-$first" --index 0 --data fashion-mnist --query 14,14 \
        --out "$out/analyze-l34.svg" --json > "$out/analyze-l34.json"
      pack
      ;;
    geometry)
      size=${IMAGE_SIZE:-112}
      seeds=${user_seeds:-"0 1 2"}
      arch=(--arch resnet50)
      dev=(--device cuda --bf16)   # training
      where=(--device cuda)        # convert, eval (fp32)
      fast=(--channels-last)
      base_steps=${BASE_STEPS:-2100}  # ~10 epochs at batch 256
      ft_steps=${FT_STEPS:-633}       # 3 epochs
      every=${EVAL_EVERY:-211}
      if [[ -n ${SMOKE:-} ]]; then
        size=32 base_steps=4 ft_steps=2 every=2 seeds=${user_seeds:-"0"}
        arch=(--arch resnet18 --set 'channels=[4,8,8,8]')
        dev=(--device cpu --threads 2)
        where=("${dev[@]}")
        fast=()
        recast=${RECAST:-build/recast}
      fi
      g=(--data fashion-mnist --image-size "$size" --batch-size "${BATCH:-128}" "${dev[@]}" "${fast[@]}" --no-progress
         --eval-batches "${EVAL_BATCHES:-24}")
      aug=(--crop-pad $((size / 8)) --hflip)
      gft=("${g[@]}" "${aug[@]}" --steps "$ft_steps" --lr 5e-4 --warmup 30 --weight-decay 0.05 --eval-every "$every")
      pre=("${g[@]}" "${aug[@]}" --lr 2e-3 --weight-decay 0.05 --warmup 100 --eval-every "$every")
      ev=(--data fashion-mnist --split test "${where[@]}" --batch-size 250)
      [[ -n ${SMOKE:-} ]] && ev+=(--max-batches 1)
      evaluate_g() {  # name dir [baseline dir]
        "$recast" eval --model "$2" "${ev[@]}" --json > "$out/$1-eval.json"
        local base=()
        [[ $# -ge 3 ]] && base=(--baseline "$3")
        "$recast" eval --model "$2" "${ev[@]}" --corrupt all "${base[@]}" --json > "$out/$1-corrupt.json" \
          2> "$out/$1-corrupt.err"
        cp "$2/metrics.jsonl" "$out/$1-metrics.jsonl" 2>/dev/null || true
        echo "$1: clean $(grep -m1 '"accuracy"' "$out/$1-eval.json" | tr -d ' ,') mce $(grep '"mce"' "$out/$1-corrupt.json" | tr -d ' ,')"
        pack
      }
      touch "$out/times.jsonl"
      for seed in $seeds; do
        r=$runs/g$size-$seed
        rm -rf "$r" && mkdir -p "$r"
        timed "g$size-base-$seed" "$recast" pretrain "${arch[@]}" "${pre[@]}" --steps "$base_steps" --seed "$seed" --out "$r/base"
        evaluate_g "g$size-base-$seed" "$r/base"
        timed "g$size-cnn-ft-$seed" "$recast" finetune --model "$r/base" "${gft[@]}" --seed "$seed" --out "$r/cnn-ft"
        evaluate_g "g$size-cnn-ft-$seed" "$r/cnn-ft"
        for v in l4 l34; do
          layers='layer4\.'
          [[ $v == l34 ]] && layers='layer[34]\.'
          "$recast" convert --recipe tcnn --model "$r/base" --out "$r/conv-$v" --layers "$layers" \
            --data fashion-mnist "${where[@]}" > "$out/g$size-convert-$v-$seed.txt" 2>&1
          timed "g$size-tcnn-$v-ft-$seed" "$recast" finetune --model "$r/conv-$v" "${gft[@]}" --seed "$seed" \
            --out "$r/tcnn-$v"
          evaluate_g "g$size-tcnn-$v-ft-$seed" "$r/tcnn-$v" "$r/cnn-ft"
        done
        # (c) the layer3+4 hybrid from scratch, for the CNN's whole budget.
        # The same layers as the conversion (its config's recast_tcnn).
        hybrid=$("$python" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["recast_tcnn"]))' \
          "$r/conv-l34/config.json")
        timed "g$size-scratch-l34-$seed" "$recast" pretrain "${arch[@]}" --set "recast_tcnn=$hybrid" \
          "${pre[@]}" --steps $((base_steps + ft_steps)) --seed "$seed" --out "$r/scratch-l34"
        evaluate_g "g$size-scratch-l34-$seed" "$r/scratch-l34" "$r/cnn-ft"
        # (d) T-CNN from a CNN pretrained for half the budget, fine-tuned for the rest.
        timed "g$size-half-base-$seed" "$recast" pretrain "${arch[@]}" "${pre[@]}" --steps $((base_steps / 2)) \
          --seed "$seed" --out "$r/half"
        "$recast" convert --recipe tcnn --model "$r/half" --out "$r/half-conv" --layers 'layer[34]\.' \
          --data fashion-mnist "${where[@]}" > "$out/g$size-convert-half-$seed.txt" 2>&1
        timed "g$size-half-tcnn-l34-$seed" "$recast" finetune --model "$r/half-conv" "${g[@]}" "${aug[@]}" \
          --steps $((base_steps - base_steps / 2 + ft_steps)) --lr 1e-3 --warmup 30 --weight-decay 0.05 \
          --eval-every "$every" --seed "$seed" --out "$r/half-tcnn"
        evaluate_g "g$size-half-tcnn-l34-$seed" "$r/half-tcnn" "$r/cnn-ft"
      done
      first=${seeds%% *}
      q=$((size / 2))
      "$recast" analyze --model "$runs/g$size-$first/tcnn-l34" --index 0 --data fashion-mnist --query "$q,$q" \
        --device "${where[1]}" --out "$out/g$size-analyze-l34.svg" --json > "$out/g$size-analyze-l34.json"
      pack
      ;;
    bench)
      build-gpu/bench/bench_conv_attention --device cuda --batch 64 --iters 10 | tee "$out/conv_attention.jsonl"
      "$python" tools/bench_gpsa.py --batch 64 --iters 10 | tee "$out/gpsa.jsonl"
      pack
      ;;
    *) echo "gpu-tcnn: unknown job '$job' (experiment, geometry, bench)" >&2; exit 2 ;;
  esac
done
