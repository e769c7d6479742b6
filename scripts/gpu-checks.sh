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
    *) echo "gpu-checks: unknown job '$job' (resume-stress, linear-bench, decoders, tokenizers)" >&2; exit 2 ;;
  esac
done
