#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the Refiner experiment and
# benchmark of docs/results.md (issue 17). Results go to $RES (default
# /tmp/recast-refiner) and, after each step, packed into $OUT/refiner-JOB.tgz
# (the device returns a limited number of files).
#   scripts/gpu-refiner.sh bench     a one-block ViT refined vs plain, forward + backward,
#                                    bf16 autocast, ViT-S/16 at 224 px and the Fashion-MNIST
#                                    ViT-tiny (bench_refiner), and the same blocks in PyTorch
#                                    eager and torch.compile (tools/bench_refiner.py)
#   scripts/gpu-refiner.sh finetune  the Fashion-MNIST ViT-tiny of docs/results.md pretrained
#                                    (BASE steps), then fine-tuned FT steps (a) plain and (b)
#                                    refined (every block, defaults), seeds $SEEDS, the
#                                    fine-tunes of all seeds at once; clean and corruption
#                                    accuracy, mCE of (b) against (a) of the same seed
#   scripts/gpu-refiner.sh refined   the finetune job's (b) alone: the base pretrained again
#                                    (seed 0), converted, fine-tuned refined for seeds $SEEDS at
#                                    once, clean and corruption accuracy; mCE against (a) by
#                                    tools/refiner_results.py from the corruption files
#   scripts/gpu-refiner.sh check     timm ViTs the tests have never seen, converted, against
#                                    timm's logits, and a few fine-tuning steps
#                                    (tools/gpu_check_refiner.py)
#   scripts/gpu-refiner.sh scratch   (c) Refined-ViT from scratch for FT steps and for
#                                    BASE + FT steps (seed 0), and the plain ViT for
#                                    BASE + FT steps, the three at once
set -euo pipefail
cd "$(dirname "$0")/.."
res=${RES:-/tmp/recast-refiner}
recast=build-gpu/recast
python=${PYTHON:-python3}
export RECAST_DATA_DIR=$PWD/.gpu-data
export FONTCONFIG_FILE=/tmp/recast-deps/etc/fonts/recast.conf
mkdir -p .gpu-data
ln -sfn /tmp/recast-deps/usr/share/datasets/fashion-mnist .gpu-data/fashion-mnist
runs=${RUNS:-/tmp/recast-runs}
BASE_STEPS=${BASE_STEPS:-2100}  # docs/results.md's ViT-tiny: ~10 epochs at batch 256
FT_STEPS=${FT_STEPS:-633}       # 3 epochs
SEEDS=${SEEDS:-"0 1 2"}
THREADS=${THREADS:-2}
RUN_LIMIT=${RUN_LIMIT:-420}
mkdir -p "$res" "$runs"
[[ -n ${OUT:-} ]] && mkdir -p "$OUT"
data=(--data fashion-mnist --batch-size 256 --bf16 --device cuda --no-progress --eval-batches 24)
vit=(--arch vit_tiny_patch16_224 --set patch_size=4)
ft=("${data[@]}" --steps "$FT_STEPS" --lr 5e-4 --warmup 30 --weight-decay 0.05 --eval-every 211)
all='{"layers":[0,1,2,3,4,5,6,7,8,9,10,11]}'

pack() { [[ -n ${OUT:-} ]] && tar -czf "$OUT/refiner-$1.tgz" -C "$res" . || true; }

timed() {  # name command...: runs it, logs it, records the wall time
  local name=$1 t0 t1
  shift
  t0=$EPOCHREALTIME
  timeout "$RUN_LIMIT" "$@" --threads "$THREADS" > "$res/$name.log" 2>&1 ||
    { echo "$name failed:"; tail -5 "$res/$name.log"; return 1; }
  t1=$EPOCHREALTIME
  echo "{\"run\": \"$name\", \"wall_s\": $(awk "BEGIN { print $t1 - $t0 }")}" >> "$res/times.jsonl"
}

evaluate() {  # name dir [baseline dir]
  local base=()
  [[ $# -ge 3 ]] && base=(--baseline "$3")
  "$recast" eval --model "$2" --data fashion-mnist --split test --device cuda --batch-size 500 \
    --json > "$res/$1-eval.json"
  "$recast" eval --model "$2" --data fashion-mnist --split test --device cuda --batch-size 500 \
    --corrupt all "${base[@]}" --json > "$res/$1-corrupt.json" 2> "$res/$1-corrupt.err"
  cp "$2/metrics.jsonl" "$res/$1-metrics.jsonl" 2>/dev/null || true
  echo "$1: clean $(grep -m1 '"accuracy"' "$res/$1-eval.json" | tr -d ' ,') $(grep -m1 '"mce"' "$res/$1-corrupt.json" | tr -d ' ,')"
}

convert_base() {  # the base evaluated, then refined with the defaults
  evaluate base "$runs/rf-base"
  "$recast" convert --recipe refiner --model "$runs/rf-base" --out "$runs/rf-conv" \
    --data fashion-mnist > "$res/convert.txt" 2>&1
  cp "$runs/rf-conv/recast_manifest.json" "$res/convert-manifest.json"
}

together() {  # runs "name|command..." lines at once, waits for all; fails if any failed
  local pids=() failed=0
  while IFS= read -r line; do
    [[ -z $line ]] && continue
    eval "timed ${line%%|*} ${line#*|}" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  return $failed
}

for job in "$@"; do
  echo "== $job"
  touch "$res/times.jsonl"
  case $job in
    bench)
      build-gpu/bench/bench_refiner --device cuda --iters 20 | tee "$res/bench_refiner.jsonl"
      "$python" tools/bench_refiner.py --iters 20 --profile "$res/bench_refiner_profile.txt" | tee "$res/bench_refiner_torch.jsonl" || true
      pack bench
      ;;
    finetune)
      rm -rf "$runs/rf-base" "$runs/rf-conv"
      timed base "$recast" pretrain "${vit[@]}" "${data[@]}" --steps "$BASE_STEPS" --lr 1e-3 \
        --weight-decay 0.05 --warmup 200 --eval-every 700 --seed 0 --out "$runs/rf-base"
      convert_base
      pack finetune
      jobs=""
      for seed in $SEEDS; do
        rm -rf "$runs/rf-plain-$seed" "$runs/rf-refined-$seed"
        jobs+="plain-ft-$seed|$recast finetune --model $runs/rf-base ${ft[*]} --seed $seed --out $runs/rf-plain-$seed"$'\n'
        jobs+="refined-ft-$seed|$recast finetune --model $runs/rf-conv ${ft[*]} --seed $seed --out $runs/rf-refined-$seed"$'\n'
      done
      together <<< "$jobs" || true
      for seed in $SEEDS; do
        evaluate "plain-ft-$seed" "$runs/rf-plain-$seed" || true
        evaluate "refined-ft-$seed" "$runs/rf-refined-$seed" "$runs/rf-plain-$seed" || true
        pack finetune
      done
      ;;
    refined)
      rm -rf "$runs/rf-base" "$runs/rf-conv" "$runs"/rf-refined-*
      timed base "$recast" pretrain "${vit[@]}" "${data[@]}" --steps "$BASE_STEPS" --lr 1e-3 \
        --weight-decay 0.05 --warmup 200 --eval-every 700 --seed 0 --out "$runs/rf-base"
      convert_base
      pack refined
      jobs=""
      for seed in $SEEDS; do
        jobs+="refined-ft-$seed|$recast finetune --model $runs/rf-conv ${ft[*]} --seed $seed --out $runs/rf-refined-$seed"$'\n'
      done
      together <<< "$jobs" || true
      pack refined
      for seed in $SEEDS; do evaluate "refined-ft-$seed" "$runs/rf-refined-$seed" & done
      wait
      pack refined
      ;;
    scratch)
      rm -rf "$runs"/rf-scratch-*
      sc=("${data[@]}" --lr 1e-3 --weight-decay 0.05 --warmup 200 --eval-every 700 --seed 0)
      total=$((BASE_STEPS + FT_STEPS))
      together <<EOF || true
refined-scratch-$FT_STEPS|$recast pretrain ${vit[*]} --set 'recast_refiner=$all' ${sc[*]} --steps $FT_STEPS --out $runs/rf-scratch-short
refined-scratch-$total|$recast pretrain ${vit[*]} --set 'recast_refiner=$all' ${sc[*]} --steps $total --out $runs/rf-scratch-long
plain-scratch-$total|$recast pretrain ${vit[*]} ${sc[*]} --steps $total --out $runs/rf-scratch-plain
EOF
      evaluate "refined-scratch-$FT_STEPS" "$runs/rf-scratch-short" || true
      evaluate "refined-scratch-$total" "$runs/rf-scratch-long" || true
      evaluate "plain-scratch-$total" "$runs/rf-scratch-plain" || true
      pack scratch
      ;;
    check)
      "$python" tools/gpu_check_refiner.py build-gpu "$res/check" 2>&1 | tee "$res/check.txt"
      pack check
      ;;
    *) echo "gpu-refiner: unknown job '$job' (bench, finetune, refined, scratch, check)" >&2; exit 2 ;;
  esac
done
