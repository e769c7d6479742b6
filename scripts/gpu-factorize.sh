#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the factorized-layers
# experiment and benchmark of docs/results.md. Results go to $RES (default
# /tmp/recast-factorize) and, after each step, packed into $OUT/factorize-JOB.tgz
# (the device returns a limited number of files).
#   scripts/gpu-factorize.sh bench   FactorizedLinear vs dense Linear, bf16, d 768 / 4096,
#                                    tokens 1 / 128 / 8192, rank d/16..d/2 (bench_factorized)
#   scripts/gpu-factorize.sh gpt     the State of the Union GPT (the T2R teacher's shape)
#   scripts/gpu-factorize.sh resnet  the Fashion-MNIST ResNet-18 (the T-CNN base's schedule);
#                                    BatchNorm recalibrated after conversion (20 batches)
#   scripts/gpu-factorize.sh fdsweep the GPT's Frobenius-decay coefficient, and --fd-attention
#   scripts/gpu-factorize.sh seeds-resnet / seeds-gpt
#                                    the seed-to-seed spread of the fine-tunes (and scratch runs)
# gpt / resnet: pretrain the dense model; factorize every Linear (GPT) / every
# conv and the classifier (ResNet) to 75 / 50 / 25 % of the parameters (--params);
# evaluate right after; fine-tune FT steps with Frobenius decay, with weight
# decay, and with neither; train the same factorized shape from scratch for
# BASE + FT steps; end-to-end forward time and peak memory of each size.
# PARALLEL=1 runs the fine-tunes and scratch runs of all sizes at once (12
# processes: on the 16-core H200 machine they stalled for minutes without
# printing a line, so the default is one at a time). Each run gets $THREADS CPU
# threads and at most $RUN_LIMIT seconds; results are packed after every run.
set -euo pipefail
cd "$(dirname "$0")/.."
res=${RES:-/tmp/recast-factorize}
recast=build-gpu/recast
bench=build-gpu/bench/bench_factorized
export RECAST_DATA_DIR=$PWD/.gpu-data
ln -sfn /tmp/recast-deps/usr/share/datasets/fashion-mnist .gpu-data/fashion-mnist
runs=${RUNS:-/tmp/recast-runs}
FRACTIONS=${FRACTIONS:-"0.75 0.5 0.25"}
LAMBDA=${LAMBDA:-1e-3}  # Frobenius decay coefficient (not tuned)
PARALLEL=${PARALLEL:-0}
THREADS=${THREADS:-8}
RUN_LIMIT=${RUN_LIMIT:-300}
mkdir -p "$res" "$runs"
[[ -n ${OUT:-} ]] && mkdir -p "$OUT"

pack() { [[ -n ${OUT:-} ]] && tar -czf "$OUT/factorize-$1.tgz" -C "$res" . || true; }

timed() {  # name command...: runs it, logs it, records the wall time
  local name=$1 t0 t1
  shift
  t0=$EPOCHREALTIME
  timeout "$RUN_LIMIT" "$@" --threads "$THREADS" > "$res/$name.log" 2>&1 ||
    { echo "$name failed:"; tail -5 "$res/$name.log"; return 1; }
  t1=$EPOCHREALTIME
  echo "{\"run\": \"$name\", \"wall_s\": $(awk "BEGIN { print $t1 - $t0 }")}" >> "$res/times.jsonl"
}

evaluate() {  # name dir: quality on the held-out split, as JSON
  local extra=()
  [[ $model == gpt ]] && extra=(--bf16)
  "$recast" eval --model "$2" "${eval_data[@]}" --device cuda "${extra[@]}" --json > "$res/$1-eval.json"
  [[ -f $2/metrics.jsonl ]] && cp "$2/metrics.jsonl" "$res/$1-metrics.jsonl"
  echo "$1: $(tr -d ' \n' < "$res/$1-eval.json" | grep -oE '"(accuracy|bits_per_byte|perplexity)":[0-9.e+-]+' | tr '\n' ' ')"
}

pids=()
failed=0
launch() {  # in the background with PARALLEL=1, else now; packs after each run
  if [[ $PARALLEL == 1 ]]; then
    "$@" < /dev/null > /dev/null 2>&1 &
    pids+=($!)
  else
    "$@" || failed=1
    pack "$model"
  fi
}

experiment() {
  rm -rf "$runs/$model-base"
  timed "$model-base" "$recast" pretrain "${arch[@]}" "${train[@]}" --steps "$BASE" "${base_opts[@]}" \
    --out "$runs/$model-base"
  evaluate "$model-base" "$runs/$model-base"
  "$bench" model --model "$runs/$model-base" --device cuda "${bench_opts[@]}" >> "$res/$model-models.jsonl"
  for f in $FRACTIONS; do
    local c="$runs/$model-f$f"
    rm -rf "$c"
    "$recast" convert --recipe factorize --model "$runs/$model-base" --out "$c" --params "$f" \
      --data "$data" --device cuda "${convert_opts[@]}" > "$res/$model-f$f-convert.txt" 2>&1
    cp "$c/recast_manifest.json" "$res/$model-f$f-convert-manifest.json"
    evaluate "$model-f$f-converted" "$c"
    if ((${#convert_opts[@]})); then  # what the conversion alone gives, for comparison
      rm -rf "$c-plain"
      "$recast" convert --recipe factorize --model "$runs/$model-base" --out "$c-plain" --params "$f" \
        --data "$data" --device cuda > "$res/$model-f$f-convert-plain.txt" 2>&1
      evaluate "$model-f$f-converted-plain" "$c-plain"
    fi
    pack "$model"
    "$bench" model --model "$c" --device cuda "${bench_opts[@]}" >> "$res/$model-models.jsonl"
  done
  for f in $FRACTIONS; do
    local c="$runs/$model-f$f"
    for v in fd wd none; do
      local reg=()
      case $v in
        fd) reg=(--frobenius-decay "$LAMBDA" --weight-decay "$WD") ;;
        wd) reg=(--weight-decay "$WD") ;;
        none) reg=(--weight-decay 0) ;;
      esac
      rm -rf "$c-$v"
      launch timed "$model-f$f-ft-$v" "$recast" finetune --model "$c" "${train[@]}" --steps "$FT" \
        "${ft_opts[@]}" "${reg[@]}" --out "$c-$v"
    done
    local shape
    shape=$(python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['recast_factorized']))" \
      "$c/config.json")
    rm -rf "$c-scratch"
    launch timed "$model-f$f-scratch" "$recast" pretrain "${arch[@]}" --set "recast_factorized=$shape" \
      "${train[@]}" --steps $((BASE + FT)) "${base_opts[@]}" --out "$c-scratch"
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  for f in $FRACTIONS; do
    for v in fd wd none scratch; do
      [[ -f $runs/$model-f$f-$v/model.safetensors ]] && evaluate "$model-f$f-$v" "$runs/$model-f$f-$v"
    done
  done
  pack "$model"
  return $failed
}

gpt_setup() {  # the State of the Union GPT: 8 x 512, the T2R teacher's shape
  model=gpt data=sotu
  arch=(--arch gpt2 --set n_layer=8 --set n_embd=512 --set n_head=8)
  train=(--data sotu --seq-len 512 --batch-size 64 --bf16 --device cuda --no-progress --eval-batches 20)
  eval_data=(--data sotu --split test --batch-size 64)
  BASE=${GPT_BASE:-1500} FT=${GPT_FT:-200} WD=0.1
  base_opts=(--lr 1e-3 --warmup 200)
  ft_opts=(--lr 5e-4 --warmup 20 --eval-every 100)
  bench_opts=(--dtype bf16 --batch 32 --seq 512)
  convert_opts=()
}

resnet_setup() {  # the Fashion-MNIST ResNet-18: the T-CNN base's schedule
  model=resnet data=fashion-mnist
  convert_opts=(--recalibrate-bn 20)
  arch=(--arch resnet18)
  train=(--data fashion-mnist --batch-size 256 --bf16 --device cuda --no-progress --eval-batches 24)
  eval_data=(--data fashion-mnist --split test --batch-size 500)
  BASE=${RESNET_BASE:-2100} FT=${RESNET_FT:-422} WD=0.05
  base_opts=(--lr 2e-3 --weight-decay 0.05 --warmup 100 --eval-every 700)
  ft_opts=(--lr 5e-4 --warmup 30 --eval-every 211)
  bench_opts=(--dtype fp32 --batch 256)
}

# The Frobenius-decay coefficient, swept: the GPT factorized to 50 % (and
# 25 %) fine-tuned FT steps with each lambda in SWEEP (weight decay WD on
# the rest, as in the experiment) beside weight decay alone and neither; and
# the paper's attention result, the dense GPT fine-tuned with decay on its
# per-head Q K^T / V O products (--fd-attention) against weight decay.
# One fine-tune of FT steps from FROM into OUT with the given options, run as
# "$model-PREFIX-ft-SUFFIX", evaluated as "$model-PREFIX-SUFFIX", then packed
# into factorize-TAG.tgz.
finetune_eval() {  # prefix suffix from out tag options...
  local prefix=$1 suffix=$2 from=$3 out=$4 tag=$5
  shift 5
  rm -rf "$out"
  timed "$model-$prefix-ft-$suffix" "$recast" finetune --model "$from" "${train[@]}" --steps "$FT" \
    "${ft_opts[@]}" "$@" --out "$out" || failed=1
  [[ -f $out/model.safetensors ]] && evaluate "$model-$prefix-$suffix" "$out"
  pack "$tag"
}

fd_sweep() {
  local sweep=${SWEEP:-"1e-6 1e-5 3e-5 1e-4 3e-4"} base=$runs/$model-base
  rm -rf "$base"
  timed "$model-base" "$recast" pretrain "${arch[@]}" "${train[@]}" --steps "$BASE" "${base_opts[@]}" \
    --out "$base"
  evaluate "$model-base" "$base"
  for f in 0.5 0.25; do
    local c=$runs/$model-f$f variants=(wd none)
    rm -rf "$c"
    "$recast" convert --recipe factorize --model "$base" --out "$c" --params "$f" \
      --data "$data" --device cuda > "$res/$model-f$f-convert.txt" 2>&1
    evaluate "$model-f$f-converted" "$c"
    for l in $sweep; do
      [[ $f == 0.25 && $l != 1e-5 && $l != 1e-4 ]] && continue
      variants+=("fd$l")
    done
    for v in "${variants[@]}"; do
      local reg=()
      case $v in
        fd*) reg=(--frobenius-decay "${v#fd}" --weight-decay "$WD") ;;
        wd) reg=(--weight-decay "$WD") ;;
        none) reg=(--weight-decay 0) ;;
      esac
      finetune_eval "f$f" "$v" "$c" "$c-$v" fdsweep "${reg[@]}"
    done
  done
  for v in wd fdattn1e-5 fdattn1e-4; do
    local reg=(--weight-decay "$WD")
    [[ $v == fdattn* ]] && reg+=(--frobenius-decay "${v#fdattn}" --fd-attention)
    finetune_eval dense "$v" "$base" "$base-$v" fdsweep "${reg[@]}"
  done
  return $failed
}

# Seed spread: the differences above are a few tenths of a point, so the
# same runs with other seeds (data order; for scratch also the initial
# weights). At FRACTION (0.25 for ResNet, 0.5 for the GPT): the fine-tune
# without decay (and, for the GPT, with Frobenius decay 1e-5) for seeds
# 0..3 and, for ResNet, the same shape from scratch for seeds 1..2.
seed_spread() {
  local base=$runs/$model-base f=$1 c
  c=$runs/$model-f$1
  rm -rf "$base" "$c"
  timed "$model-base" "$recast" pretrain "${arch[@]}" "${train[@]}" --steps "$BASE" "${base_opts[@]}" \
    --out "$base"
  evaluate "$model-base" "$base"
  "$recast" convert --recipe factorize --model "$base" --out "$c" --params "$f" \
    --data "$data" --device cuda "${convert_opts[@]}" > "$res/$model-f$f-convert.txt" 2>&1
  evaluate "$model-f$f-converted" "$c"
  local v s reg
  for v in $2; do
    for s in 0 1 2 3; do
      reg=(--weight-decay 0)
      [[ $v == fd* ]] && reg=(--frobenius-decay "${v#fd}" --weight-decay "$WD")
      finetune_eval "f$f" "$v-s$s" "$c" "$c-$v-s$s" "seeds-$model" "${reg[@]}" --seed "$s"
    done
  done
  [[ $model == resnet ]] || return 0
  local shape
  shape=$(python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['recast_factorized']))" \
    "$c/config.json")
  for s in 1 2; do
    rm -rf "$c-scratch-s$s"
    timed "$model-f$f-scratch-s$s" "$recast" pretrain "${arch[@]}" --set "recast_factorized=$shape" \
      "${train[@]}" --steps $((BASE + FT)) "${base_opts[@]}" --seed "$s" --out "$c-scratch-s$s" || failed=1
    [[ -f $c-scratch-s$s/model.safetensors ]] && evaluate "$model-f$f-scratch-s$s" "$c-scratch-s$s"
    pack "seeds-$model"
  done
}

for job in "$@"; do
  case $job in
    bench)
      "$bench" linear --device cuda --dtype bf16 | tee "$res/linear-cuda-bf16.jsonl"
      pack bench
      ;;
    gpt)
      gpt_setup
      experiment
      ;;
    fdsweep)
      gpt_setup
      fd_sweep
      ;;
    seeds-resnet)
      resnet_setup
      seed_spread 0.25 none
      ;;
    seeds-gpt)
      gpt_setup
      seed_spread 0.5 "none fd1e-5"
      ;;
    resnet)
      resnet_setup
      experiment
      ;;
    *) echo "gpu-factorize: unknown job '$job' (bench, gpt, resnet, fdsweep, seeds-resnet, seeds-gpt)" >&2; exit 2 ;;
  esac
done
