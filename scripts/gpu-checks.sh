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
#   scripts/gpu-checks.sh decode-bench    after decode: ms/token of the rows in DECODE_ROWS ("model
#                                         batch context graph|eager|profile" per line)
#   scripts/gpu-checks.sh decode-peers    transformers' generate (eager, static + torch.compile) on the
#                                         same weights, and the measured copy bandwidth
#   scripts/gpu-checks.sh decode-kernel   the CUDA decode-attention kernels' tests and ms/token with and
#                                         without them (RECAST_DECODE_KERNEL=1; after decode)
#   scripts/gpu-checks.sh spm-fixtures    make_fixtures.py --spm-classes-only into $OUT/checks/fixtures
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
    spm-fixtures)
      # tests/fixtures/hf_{mistral,llama,bare}_spm_* (make_fixtures.py --spm-classes-only), made from the
      # committed hf_llama2_spm_model; copied back by hand.
      rm -rf "$out/fixtures" && mkdir -p "$out/fixtures"
      cp -r tests/fixtures/hf_llama2_spm_model "$out/fixtures/"
      python3 tools/make_fixtures.py "$out/fixtures" --spm-classes-only 2>&1 | grep -v Warning | tail -5
      ;;
    decode)
      d=/tmp/recast-decode
      rm -rf "$d" && mkdir -p "$d"
      python3 - "$d" <<'PY'
import sys, torch, transformers as tf
d = sys.argv[1]
torch.manual_seed(0)
tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=66000)).save_pretrained(f"{d}/softmax")
tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=4, hidden_size=512, intermediate_size=1376, num_attention_heads=8,
    num_key_value_heads=2, vocab_size=32000, max_position_embeddings=8192)).save_pretrained(f"{d}/llama")
# Llama-3.2-1B's shape (random weights, bf16 on disk).
with torch.device("cuda"):
    m = tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)).to(torch.bfloat16)
m.save_pretrained(f"{d}/llama1b")
PY
      c=(build-gpu/recast convert --device cuda)
      "${c[@]}" --recipe t2r --model "$d/softmax" --out "$d/t2r" > "$out/decode-convert.log" 2>&1
      # hybrid: every 4th layer (0, 4, 8) keeps softmax attention
      "${c[@]}" --recipe t2r --model "$d/softmax" --out "$d/hybrid" --layers 'h\.([1235679]|1[01])\.' >> "$out/decode-convert.log" 2>&1
      "${c[@]}" --recipe factorize --model "$d/softmax" --out "$d/factorized" --rank-ratio 0.25 >> "$out/decode-convert.log" 2>&1
      "${c[@]}" --recipe t2r --model "$d/llama1b" --out "$d/llama1b-t2r" >> "$out/decode-convert.log" 2>&1
      grep -i "error" "$out/decode-convert.log" | head -5 || true
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
      # After decode. DECODE_ROWS: "model batch context mode" per line (mode graph, eager or
      # profile: a graph run under the Kineto profiler, trace in $out). Appends to decode.jsonl.
      d=/tmp/recast-decode
      rows=${DECODE_ROWS:-"softmax 1 4096 graph
t2r 1 4096 graph"}
      while read -r m batch ctx mode; do
        [[ -z $m ]] && continue
        flag=()
        [[ $mode == eager ]] && flag=(--no-cuda-graph)
        [[ $mode == profile ]] && flag=(--profile "$out/profile-$m-b$batch-$ctx.json")
        timeout 150 build-gpu/recast bench decode --model "$d/$m" --context "$ctx" --new-tokens 64 --batch "$batch" \
          --device cuda --dtype bf16 --json "${flag[@]}" > "$out/row.json" 2> "$out/decode-err.txt" &&
          python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["variant"]=sys.argv[2]; r["mode"]=sys.argv[3]; print(json.dumps(r))' \
            "$out/row.json" "$m" "$mode" >> "$out/decode.jsonl" ||
          echo "{\"variant\": \"$m\", \"batch\": $batch, \"context\": $ctx, \"mode\": \"$mode\", \"error\": \"$(tail -1 "$out/decode-err.txt" | tr -d '"\\' | cut -c1-200)\"}" >> "$out/decode.jsonl"
      done <<< "$rows"
      python3 - "$out/decode.jsonl" <<'PY' | tee "$out/decode-summary.txt"
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    head = f'{r["variant"]:12s} {r["mode"]:7s} B={r["batch"]:<3d} ctx={r["context"]:<6d}'
    if "error" in r:
        print(head, "error:", r["error"]); continue
    print(head, f'{r["ms_per_token"]:8.3f} ms/token {r["tokens_per_s"]:10.1f} tok/s  peak {r["peak_memory_mb"]:8.0f} MB graph={r["cuda_graph"]}')
    p = r.get("profile")
    if p:
        print(f'    profile: {p["events_per_token"]:.1f} device events/token, {p["busy_us_per_token"]:.1f} us busy/token')
        for t in p["top"][:12]:
            print(f'      {t["us_per_token"]:8.1f} us {t["per_token"]:5.1f}x {t["name"][:110]}')
PY
      ;;
    decode-kernel)
      # ops/cuda/attention_decode (opt-in, RECAST_DECODE_KERNEL=1): its test against the
      # reference, the graph steps through it, then ms/token with and without it (after decode).
      RECAST_DECODE_KERNEL=1 build-gpu/tests/test_models \
        --gtest_filter='Attention.*:FixedSteps.*:StaticCache.*:SampleOnDevice.*' > "$out/decode-kernel-tests.log" 2>&1 ||
        echo "decode kernel tests FAILED"
      grep -E "^\[  (PASSED|FAILED) |Failure|OK \] Attention.Cuda" "$out/decode-kernel-tests.log" | head -20
      d=/tmp/recast-decode
      for ctx in ${DECODE_CONTEXTS:-1024 4096 16384}; do
        for on in 0 1; do
          RECAST_DECODE_KERNEL=$on timeout 150 build-gpu/recast bench decode --model "$d/softmax" --context "$ctx" \
            --new-tokens 64 --device cuda --dtype bf16 --json |
            python3 -c 'import json,sys; r=json.load(sys.stdin); r["decode_kernel"]=sys.argv[1]=="1"; print(json.dumps(r))' "$on" |
            tee -a "$out/decode-kernel.jsonl"
        done
      done
      ;;
    decode-peers)
      # transformers' generate (DECODE_HF_MODES: eager, compile) on DECODE_HF_MODELS at DECODE_HF_CONTEXT,
      # and the copy bandwidth, in the same run as decode-bench.
      d=/tmp/recast-decode
      for m in ${DECODE_HF_MODELS:-softmax}; do
        for mode in ${DECODE_HF_MODES:-eager compile}; do
          (cd tools && timeout 280 python3 bench_decode_hf.py "$d/$m" --context "${DECODE_HF_CONTEXT:-4096}" \
            --new-tokens 64 --mode "$mode") > "$out/hf-row.json" 2> "$out/decode-hf-$m-$mode.err" &&
            python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["variant"]=sys.argv[2]; print(json.dumps(r))' \
              "$out/hf-row.json" "$m" | tee -a "$out/decode-hf.jsonl" || { echo "$m $mode failed"; tail -3 "$out/decode-hf-$m-$mode.err"; }
        done
      done
      python3 -c 'import json, time, torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): y.copy_(x)
torch.cuda.synchronize(); print(json.dumps({"copy_GBps": 2 * 20 * 2**30 / (time.perf_counter() - t) / 1e9, "device": torch.cuda.get_device_name(0)}))' | tee "$out/decode-bandwidth.json"
      echo "nsys: $(command -v nsys || echo none); ncu: $(command -v ncu || echo none)" | tee -a "$out/decode-bandwidth.json.txt"
      ;;
    *) echo "gpu-checks: unknown job '$job' (resume-stress, linear-bench, decoders, tokenizers, spm-fixtures, decode, decode-bench, decode-kernel, decode-peers, dist)" >&2; exit 2 ;;
  esac
done
