#!/usr/bin/env bash
# On the GPU machine: recipe conv (pretrained convolutions). Results go to $OUT/conv/.
#   scripts/gpu-conv.sh build        recast, recast-engine, test_models, bench_token_conv
#   scripts/gpu-conv.sh test         the token-conv and conv tests, CUDA kernels included
#   scripts/gpu-conv.sh bench        bench_token_conv kernel + block (bench/bench_token_conv.cpp)
#   scripts/gpu-conv.sh check        tools/gpu_check_conv.py: transformers checkpoints converted
#   scripts/gpu-conv.sh decode       ms/token and memory vs context: softmax, T2R, conv
#   scripts/gpu-conv.sh experiment   Tay et al.'s questions at our scale (docs/results.md)
# Needs .debs (scripts/gpu-debs.sh) for the build.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}/conv
recast=build-gpu/recast
python=${PYTHON:-python3}
runs=${RUNS:-/tmp/recast-runs}
mkdir -p "$out" "$runs"

for job in "$@"; do
  case $job in
    build)
      TARGETS="recast recast-engine test_models bench_token_conv" scripts/gpu-build.sh > "$out/build.txt" 2>&1
      tail -3 "$out/build.txt"
      ;;
    test)
      build-gpu/tests/test_models --gtest_filter='TokenConv*:Conv*' > "$out/test.txt" 2>&1
      echo "test_models (conv): exit $?"
      grep -E "OK \]|FAILED|SKIPPED|PASSED" "$out/test.txt" | tail -20
      ;;
    bench)
      build-gpu/bench/bench_token_conv kernel --device cuda --iters 20 > "$out/bench-kernel.jsonl" 2> "$out/bench-err.txt"
      build-gpu/bench/bench_token_conv block --device cuda --iters 10 > "$out/bench-block.jsonl" 2>> "$out/bench-err.txt"
      tail -3 "$out/bench-err.txt"
      "$python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/bench-kernel.jsonl")]
print(rows[0])
for r in rows[1:]:
    if r["T"] == 8192 or r["K"] == 31:
        print(f'{r["kind"]:11s} {r["path"]:8s} T={r["T"]:5d} K={r["K"]:2d} fwd {r["fwd_ms"]:.3f} ms '
              f'({r["fwd_gb_s"]:.0f} GB/s, {100 * r["of_nominal"]:.0f}% of 4.8 TB/s) fwd+bwd {r["fwd_bwd_ms"]:.3f} ms')
for l in open(f"{out}/bench-block.jsonl"):
    print(l.strip())
PY
      ;;
    check)
      (cd tools && "$python" gpu_check_conv.py ../build-gpu "../$out") 2>&1 | tee "$out/check.txt" | tail -14
      ;;
    decode)
      rm -rf "$runs/cdec-softmax" "$runs/cdec-t2r" "$runs/cdec-conv"
      "$python" -c 'import random; random.seed(0); w = "the of and to in a is that for it as was".split(); open("/tmp/recast-conv-text.txt", "w").write("\n".join(" ".join(random.choice(w) for _ in range(12)) for _ in range(20000)))'
      # GPT-2 small's shape with 33k positions, briefly trained (weights do not matter for speed).
      "$recast" pretrain --arch gpt2 --set n_layer=12 --set n_embd=768 --set n_head=12 \
        --set n_positions=33000 --data /tmp/recast-conv-text.txt --tokenizer bytes --seq-len 256 \
        --batch-size 8 --steps 2 --device cuda --no-progress --eval-batches 1 --out "$runs/cdec-softmax" \
        > "$out/decode-pretrain.txt" 2>&1 || tail -3 "$out/decode-pretrain.txt"
      "$recast" convert --recipe t2r --model "$runs/cdec-softmax" --out "$runs/cdec-t2r" --device cuda > /dev/null 2>&1
      "$recast" convert --recipe conv --model "$runs/cdec-softmax" --out "$runs/cdec-conv" --kernel 31 \
        --device cuda > /dev/null 2>&1
      : > "$out/decode.jsonl"
      for ctx in 1024 4096 16384 32000; do
        for m in softmax t2r conv; do
          timeout 120 "$recast" bench decode --model "$runs/cdec-$m" --context $ctx --new-tokens 64 \
            --batch 1 --device cuda --dtype bf16 --json >> "$out/decode.jsonl" 2> "$out/decode-err.txt" ||
            echo "{\"attention\": \"$m\", \"context\": $ctx, \"error\": \"$(tail -1 "$out/decode-err.txt" | tr -d '"')\"}" >> "$out/decode.jsonl"
        done
      done
      "$python" - "$out/decode.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print({k: r.get(k) for k in ("attention", "context", "ms_per_token", "cache_mb", "peak_memory_mb", "error")})
PY
      ;;
    *)
      echo "unknown job $job" >&2
      exit 2
      ;;
  esac
done
