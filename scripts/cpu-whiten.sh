#!/usr/bin/env bash
# Plain SVD against data-aware (whitened, --whiten N) factorization at CPU
# scale: the demo's GPT (4 x 128, State of the Union) and the demo's
# ResNet-18 (channels 32-256, Fashion-MNIST), each pretrained here, factorized
# to 75 / 50 / 25 % of its numbers (--params) both ways; quality right after
# conversion (the ResNet also with BatchNorm recalibrated) and, for the GPT,
# after a short fine-tune. Results: $RES (default
# bench/results/DATE-cpu-whiten/), one eval JSON per model and the convert
# reports.
set -euo pipefail
cd "$(dirname "$0")/.."
recast=${BUILD:-build}/recast
res=${RES:-bench/results/$(date +%F)-cpu-whiten}
runs=${RUNS:-/tmp/recast-cpu-whiten}
FRACTIONS=${FRACTIONS:-"0.75 0.5 0.25"}
GPT_STEPS=${GPT_STEPS:-300} FT=${FT:-60} RESNET_STEPS=${RESNET_STEPS:-600}
WHITEN=${WHITEN:-16}
mkdir -p "$res" "$runs"
scripts/fetch-data.sh sotu fashion-mnist > /dev/null

evaluate() {  # name dir data: the eval JSON, and its headline number
  local extra=()
  [[ $3 == sotu ]] && extra=(--max-batches 50) || extra=(--batch-size 500)
  "$recast" eval --model "$2" --data "$3" --split test "${extra[@]}" --json > "$res/$1-eval.json"
  echo "$1: $(tr -d ' \n' < "$res/$1-eval.json" | grep -oE '"(accuracy|perplexity)":[0-9.e+-]+')"
}
convert() {  # name base fraction data extra...: factorize, report kept
  local name=$1 base=$2 f=$3 data=$4
  shift 4
  rm -rf "$runs/$name"
  "$recast" convert --recipe factorize --model "$base" --out "$runs/$name" --params "$f" \
    --data "$data" "$@" > "$res/$name-convert.txt" 2>&1
  cp "$runs/$name/recast_manifest.json" "$res/$name-manifest.json"
  evaluate "$name" "$runs/$name" "$data"
}

# The GPT.
gpt=$runs/gpt
rm -rf "$gpt"
"$recast" pretrain --arch gpt2 --set n_layer=4 --set n_embd=128 --set n_head=4 --data sotu \
  --seq-len 128 --batch-size 16 --steps "$GPT_STEPS" --lr 2e-3 --eval-batches 10 --no-progress -q \
  --out "$gpt"
evaluate gpt "$gpt" sotu
for f in $FRACTIONS; do
  convert "gpt-f$f-plain" "$gpt" "$f" sotu --batch-size 8
  convert "gpt-f$f-whiten" "$gpt" "$f" sotu --batch-size 8 --whiten "$WHITEN"
  for v in plain whiten; do
    rm -rf "$runs/gpt-f$f-$v-ft"
    "$recast" finetune --model "$runs/gpt-f$f-$v" --data sotu --seq-len 128 --batch-size 16 \
      --steps "$FT" --lr 1e-3 --eval-batches 10 --no-progress -q --out "$runs/gpt-f$f-$v-ft"
    evaluate "gpt-f$f-$v-ft" "$runs/gpt-f$f-$v-ft" sotu
  done
done

# The ResNet.
resnet=$runs/resnet
rm -rf "$resnet"
"$recast" pretrain --arch resnet18 --set 'channels=[32,64,128,256]' --data fashion-mnist \
  --batch-size 64 --steps "$RESNET_STEPS" --lr 2e-3 --weight-decay 0.05 --warmup 60 \
  --eval-batches 10 --no-progress -q --out "$resnet"
evaluate resnet "$resnet" fashion-mnist
for f in $FRACTIONS; do
  for bn in 0 20; do
    extra=(--batch-size 64)
    [[ $bn -gt 0 ]] && extra+=(--recalibrate-bn "$bn")
    convert "resnet-f$f-plain-bn$bn" "$resnet" "$f" fashion-mnist "${extra[@]}"
    convert "resnet-f$f-whiten-bn$bn" "$resnet" "$f" fashion-mnist "${extra[@]}" --whiten "$WHITEN"
  done
done
