#!/usr/bin/env bash
# The factorized-layers experiment at CPU scale (2 cores, a few minutes per
# run): the demo's ResNet-18 (channels 32-256) on Fashion-MNIST, factorized to
# 75 / 50 / 25 % of its numbers (--params), fine-tuned with Frobenius decay at
# several lambdas, with weight decay and with neither, against the same shape
# from scratch for the same total steps. Results: $RES (default
# bench/results/DATE-cpu-factorize-resnet/), one eval JSON per run.
# RECALIBRATE=N: re-estimate the BatchNorm statistics on N training batches
# right after factorizing (convert --recalibrate-bn N).
set -euo pipefail
cd "$(dirname "$0")/.."
recast=${BUILD:-build}/recast
res=${RES:-bench/results/$(date +%F)-cpu-factorize-resnet}
runs=${RUNS:-/tmp/recast-cpu-factorize}
FRACTIONS=${FRACTIONS:-"0.75 0.5 0.25"}
LAMBDAS=${LAMBDAS:-"1e-5 1e-4"}
BASE=${BASE:-600} FT=${FT:-150}
RECALIBRATE=${RECALIBRATE:-0}
convert_extra=()
[[ $RECALIBRATE -gt 0 ]] && convert_extra=(--recalibrate-bn "$RECALIBRATE" --batch-size 64)
mkdir -p "$res" "$runs"
train=(--data fashion-mnist --batch-size 64 --no-progress --eval-batches 10 -q)
base_opts=(--lr 2e-3 --weight-decay 0.05 --warmup 60)
ft_opts=(--lr 5e-4 --warmup 15)

timed() {  # name command...
  local name=$1 t0 t1
  shift
  t0=$EPOCHREALTIME
  "$@" > "$res/$name.log" 2>&1 || { echo "$name failed:"; tail -3 "$res/$name.log"; return 1; }
  t1=$EPOCHREALTIME
  echo "{\"run\": \"$name\", \"wall_s\": $(awk "BEGIN { print $t1 - $t0 }")}" >> "$res/times.jsonl"
}
evaluate() {  # name dir
  "$recast" eval --model "$2" --data fashion-mnist --split test --batch-size 500 --json > "$res/$1-eval.json"
  [[ -f $2/metrics.jsonl ]] && cp "$2/metrics.jsonl" "$res/$1-metrics.jsonl"
  echo "$1: $(tr -d ' \n' < "$res/$1-eval.json" | grep -oE '"accuracy":[0-9.e+-]+')"
}

scripts/fetch-data.sh fashion-mnist > /dev/null
rm -rf "$runs/base"
timed base "$recast" pretrain --arch resnet18 --set 'channels=[32,64,128,256]' "${train[@]}" \
  --steps "$BASE" "${base_opts[@]}" --out "$runs/base"
evaluate base "$runs/base"
for f in $FRACTIONS; do
  c="$runs/f$f"
  rm -rf "$c"*
  "$recast" convert --recipe factorize --model "$runs/base" --out "$c" --params "$f" \
    --data fashion-mnist "${convert_extra[@]}" > "$res/f$f-convert.txt" 2>&1
  cp "$c/recast_manifest.json" "$res/f$f-convert-manifest.json"
  evaluate "f$f-converted" "$c"
  variants=(wd none)
  for l in $LAMBDAS; do variants+=("fd$l"); done
  for v in "${variants[@]}"; do
    case $v in
      fd*) reg=(--frobenius-decay "${v#fd}" --weight-decay 0.05) ;;
      wd) reg=(--weight-decay 0.05) ;;
      none) reg=(--weight-decay 0) ;;
    esac
    timed "f$f-$v" "$recast" finetune --model "$c" "${train[@]}" --steps "$FT" "${ft_opts[@]}" \
      "${reg[@]}" --out "$c-$v"
    evaluate "f$f-$v" "$c-$v"
  done
  shape=$(python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['recast_factorized']))" \
    "$c/config.json")
  timed "f$f-scratch" "$recast" pretrain --arch resnet18 --set 'channels=[32,64,128,256]' \
    --set "recast_factorized=$shape" "${train[@]}" --steps $((BASE + FT)) "${base_opts[@]}" --out "$c-scratch"
  evaluate "f$f-scratch" "$c-scratch"
done
