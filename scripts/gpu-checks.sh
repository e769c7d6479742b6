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
#   scripts/gpu-checks.sh decode          CUDA-graph decoding: the graph's greedy tokens equal
#                                         eager decoding's (GPT-2-small shape softmax and T2R, a GQA
#                                         Llama shape; fp32 and bf16)
#   scripts/gpu-checks.sh decode-bench    after decode: ms/token with and without graphs at batch
#                                         1 / 32 (DECODE_BATCHES), context 1k..32k (DECODE_CONTEXTS)
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
    decode)
      d=/tmp/recast-decode
      rm -rf "$d" && mkdir -p "$d"
      python3 - "$d" <<'PY'
import sys, torch, transformers as tf
d = sys.argv[1]
torch.manual_seed(0)
tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=33000)).save_pretrained(f"{d}/softmax")
tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=4, hidden_size=512, intermediate_size=1376, num_attention_heads=8,
    num_key_value_heads=2, vocab_size=32000, max_position_embeddings=8192)).save_pretrained(f"{d}/llama")
PY
      build-gpu/recast convert --recipe t2r --model "$d/softmax" --out "$d/t2r" --device cuda > "$out/decode-convert.log" 2>&1
      ids=$(python3 -c 'import random; random.seed(1); print(",".join(str(random.randrange(30000)) for _ in range(200)))')
      : > "$out/decode-tokens.txt"
      for m in softmax t2r llama; do
        for dt in f32 bf16; do
          g=(build-gpu/recast generate --model "$d/$m" --prompt-ids "$ids" --prompt-ids "${ids:0:300}" --max-tokens 64
             --temperature 0 --ignore-eos --device cuda --dtype "$dt" --json -v)
          "${g[@]}" > "$d/graph.json" 2> "$d/graph.err"
          "${g[@]}" --no-cuda-graph > "$d/eager.json" 2> "$d/eager.err"
          same=$(cmp -s "$d/graph.json" "$d/eager.json" && echo same || echo DIFFERENT)
          echo "$m $dt: graph vs eager greedy tokens $same ($(wc -c < "$d/graph.json") bytes); $(grep -ih "graph" "$d/graph.err" | head -1)" |
            tee -a "$out/decode-tokens.txt"
        done
      done
      ;;
    decode-bench)
      d=/tmp/recast-decode  # models made by the decode job
      : > "$out/decode.jsonl"
      for batch in ${DECODE_BATCHES:-1 32}; do
        for ctx in ${DECODE_CONTEXTS:-1024 4096 16384 32000}; do
          for m in softmax t2r; do
            for mode in graph eager; do
              flag=(); [[ $mode == eager ]] && flag=(--no-cuda-graph)
              timeout 120 build-gpu/recast bench decode --model "$d/$m" --context "$ctx" --new-tokens 64 --batch "$batch" \
                --device cuda --dtype bf16 --json "${flag[@]}" >> "$out/decode.jsonl" 2> "$out/decode-err.txt" ||
                echo "{\"attention\": \"$m\", \"batch\": $batch, \"context\": $ctx, \"mode\": \"$mode\", \"error\": \"$(tail -1 "$out/decode-err.txt" | tr -d '"')\"}" >> "$out/decode.jsonl"
            done
          done
        done
      done
      # The peer (transformers' generate, eager and static cache + torch.compile) and the
      # copy bandwidth, in the same run.
      : > "$out/decode-hf.jsonl"
      for mode in ${DECODE_HF_MODES:-eager compile}; do
        (cd tools && timeout 240 python3 bench_decode_hf.py "$d/softmax" --context "${DECODE_HF_CONTEXT:-4096}" \
          --new-tokens 64 --mode "$mode") >> "$out/decode-hf.jsonl" 2> "$out/decode-hf-$mode.err" || tail -3 "$out/decode-hf-$mode.err"
      done
      python3 -c 'import json, time, torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): y.copy_(x)
torch.cuda.synchronize(); print(json.dumps({"copy_GBps": 2 * 20 * 2**30 / (time.perf_counter() - t) / 1e9}))' > "$out/decode-bandwidth.json"
      cat "$out/decode-hf.jsonl" "$out/decode-bandwidth.json"
      python3 - "$out/decode.jsonl" <<'PY' | tee "$out/decode-summary.txt"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    mode = r.get("mode") or ("graph" if r.get("cuda_graph") else "eager")
    head = f'{r["attention"]:8s} {mode:5s} B={r["batch"]:<3d} ctx={r["context"]:<6d}'
    print(head, f'error: {r["error"]}' if "error" in r else f'{r["ms_per_token"]:8.3f} ms/token {r["tokens_per_s"]:10.1f} tok/s  peak {r["peak_memory_mb"]:8.0f} MB')
PY
      ;;
    *) echo "gpu-checks: unknown job '$job' (resume-stress, linear-bench, decoders, tokenizers, decode, decode-bench, dist)" >&2; exit 2 ;;
  esac
done
