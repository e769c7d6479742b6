#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: checks and benchmarks that
# need its hardware. Results go to $OUT/checks/.
#   scripts/gpu-checks.sh resume-stress   the interrupt/resume tests repeated under
#                                         load (8 copies at once, REPEAT times each)
#   scripts/gpu-checks.sh linear-bench    fused decoding step vs LibTorch form, and
#                                         chunked linear attention vs SDPA (crossover)
#   scripts/gpu-checks.sh decoders        unseen Qwen2 / Mistral / Llama 3 rope checkpoints:
#                                         recast forward (CPU, CUDA) vs transformers, t2r + factorize
#   scripts/gpu-checks.sh tokenizers      unseen tokenizer.json / tokenizer.model directories and
#                                         GPT-2's real vocabulary: recast tokenize vs transformers
#   scripts/gpu-checks.sh dist            NCCL through `recast launch` on one GPU (WORLD_SIZE=1) and
#                                         under torchrun --no-python: GPT-2-small shape, bf16, tokens/s
#                                         and loss beside the same run without a process group
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}/checks
mkdir -p "$out"
for job in "$@"; do
  case $job in
    resume-stress)
      repeat=${REPEAT:-6}
      filter='TrainCli.Kill*:TrainCli.Sigterm*:TrainCli.SecondSignal*'
      t0=$(date +%s)
      for i in 1 2 3 4 5 6 7 8; do
        build-gpu/tests/test_train --gtest_filter="$filter" --gtest_repeat="$repeat" \
          > "$out/stress-$i.log" 2>&1 &
      done
      wait || true
      ok=$(cat "$out"/stress-*.log | grep -c '^\[       OK \]' || true)
      bad=$(cat "$out"/stress-*.log | grep -c '^\[  FAILED  \] TrainCli\.[A-Za-z]* (' || true)
      echo "resume-stress: $ok passed, $bad failed in $(($(date +%s) - t0)) s (8 x $repeat repeats of $filter)" |
        tee "$out/stress-summary.txt"
      grep -h "differ\|Failure" "$out"/stress-*.log | sort | uniq -c | head -20 | tee -a "$out/stress-summary.txt"
      ;;
    linear-bench)
      b=build-gpu/bench/bench_linear_attention
      $b step | tee "$out/linear-step.jsonl"
      $b step --batch 1 | tee -a "$out/linear-step.jsonl"
      $b step --batch 32 | tee -a "$out/linear-step.jsonl"
      $b prefill | tee "$out/linear-prefill.jsonl"
      $b prefill --batch 8 --max-tokens 16384 | tee -a "$out/linear-prefill.jsonl"
      ;;
    decoders) (cd tools && python3 gpu_check_decoders.py ../build-gpu "$out") ;;
    tokenizers)
      vocab=()
      [[ -f data/gpt2-vocab/vocab.json ]] && vocab=(../data/gpt2-vocab)
      (cd tools && python3 gpu_check_tokenizers.py ../build-gpu "$out" "${vocab[@]}")
      ;;
    dist)
      d=/tmp/recast-dist
      rm -rf "$d" && mkdir -p "$d"
      cat README.md docs/*.md docs/recasts/*.md > "$d/corpus.txt"
      common=(pretrain --arch gpt2 --set n_layer=12 --set n_embd=768 --set n_head=12 --set n_positions=1024
              --data "$d/corpus.txt" --seq-len 1024 --batch-size 8 --steps "${DIST_STEPS:-40}" --log-every 10
              --device cuda --bf16 --no-progress -v)
      port=$((29500 + RANDOM % 1000))
      build-gpu/recast "${common[@]}" --out "$d/plain" > "$out/dist-plain.log" 2>&1 || echo "plain failed"
      build-gpu/recast launch --nproc-per-node 1 --master-port "$port" "${common[@]}" --out "$d/launch" \
        > "$out/dist-launch.log" 2>&1 || echo "launch failed"
      if command -v torchrun > /dev/null; then
        torchrun --nproc-per-node 1 --master-port $((port + 1)) --no-python build-gpu/recast "${common[@]}" \
          --out "$d/torchrun" > "$out/dist-torchrun.log" 2>&1 || echo "torchrun failed"
      fi
      for r in plain launch torchrun; do
        [[ -f $d/$r/metrics.jsonl ]] || continue
        echo "$r: $(grep '"split":"train"' "$d/$r/metrics.jsonl" | tail -1)"
      done | tee "$out/dist-summary.txt"
      grep -h "process group\|buckets\|ranks x" "$out"/dist-*.log | sort | uniq -c | head | tee -a "$out/dist-summary.txt"
      ;;
    *) echo "gpu-checks: unknown job '$job' (resume-stress, linear-bench, decoders, tokenizers, dist)" >&2; exit 2 ;;
  esac
done
