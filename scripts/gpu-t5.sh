#!/usr/bin/env bash
# On the GPU machine (one call): builds recast, then
#   1. Refiner's fast path on CUDA (bench_refiner; issue 17's channels-last check);
#   2. T5 against transformers on unseen configs, CPU / CUDA fp32 / CUDA bf16, and
#      SentencePiece on unseen texts (tools/gpu_check_t5.py);
#   3. a t5-small-shaped training step (6 + 6 blocks, d_model 512, 512 inputs /
#      114 targets, batch 32, bf16 autocast) side by side: transformers eager
#      (tools/bench_train_hf.py --family t5) and recast pretrain (span
#      corruption on a generated text, metrics.jsonl), plus a bf16 matmul
#      measured in the same run as the hardware figure.
# Results in $OUT (tar them before they come back). Needs .debs (scripts/gpu-debs.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}
mkdir -p "$out"
python=${PYTHON:-python3}
TARGETS="recast recast-engine bench_refiner" scripts/gpu-build.sh > "$out/build.txt" 2>&1
tail -2 "$out/build.txt"
build-gpu/bench/bench_refiner --device cuda --iters 20 > "$out/bench_refiner.txt" 2>&1
tail -12 "$out/bench_refiner.txt"
"$python" tools/gpu_check_t5.py build-gpu "$out" 2>&1 | tee "$out/gpu-t5.txt" | tail -14
"$python" - > "$out/matmul.txt" <<'PY'
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); s = (time.perf_counter() - t) / 20
print(f"bf16 8192^3 matmul: {2 * 8192**3 / s / 1e12:.0f} TFLOP/s")
PY
cat "$out/matmul.txt"
"$python" tools/bench_train_hf.py --family t5 --layers 6 --width 512 --heads 8 --vocab 32128 \
  --seq-len 512 --target-len 114 --batch-size 32 --steps 20 --warmup-steps 5 --dtype bf16 \
  --json "$out/hf-t5-train.json" 2>&1 | tail -2
mkdir -p /tmp/t5text
"$python" - <<'PY'
import random
random.seed(0)
words = ("the of and to in a is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if "
         "so no will more can out up who them some into than its then only other new time").split()
with open("/tmp/t5text/corpus.txt", "w") as f:
    for _ in range(60000):
        f.write(" ".join(random.choice(words) for _ in range(12)) + ".\n")
PY
rm -rf /tmp/t5run
build-gpu/recast pretrain --arch t5 --set d_model=512 --set d_kv=64 --set num_heads=8 --set d_ff=2048 \
  --set num_layers=6 --set vocab_size=32128 --tokenizer bytes --data /tmp/t5text/corpus.txt \
  --seq-len 512 --batch-size 32 --steps 30 --warmup 5 --bf16 --device cuda --log-every 5 \
  --eval-batches 1 --no-progress --out /tmp/t5run > "$out/recast-t5-train.txt" 2>&1
tail -3 "$out/recast-t5-train.txt"
cp /tmp/t5run/metrics.jsonl "$out/recast-t5-train-metrics.jsonl" 2>/dev/null
grep '"train"' "$out/recast-t5-train-metrics.jsonl" | tail -4
