#!/usr/bin/env bash
# On the GPU machine: recipe conv (pretrained convolutions). Results go to $OUT/conv/.
#   scripts/gpu-conv.sh build        recast, recast-engine, test_models, bench_token_conv
#   scripts/gpu-conv.sh test         the token-conv and conv tests, CUDA kernels included
#   scripts/gpu-conv.sh bench        bench_token_conv kernel + block (bench/bench_token_conv.cpp)
#   scripts/gpu-conv.sh check        tools/gpu_check_conv.py: transformers checkpoints converted
#   scripts/gpu-conv.sh decode       ms/token and memory vs context: softmax, T2R, conv
#   scripts/gpu-conv.sh experiment-pretrain experiment-spam experiment-author
#                                    Tay et al.'s questions at our scale (docs/results.md):
#       a small T5 (4 + 4 blocks x 256, byte level) with softmax, lightweight,
#       dynamic and dilated self-attention, each pretrained with span corruption
#       on State of the Union + Moby Dick for the same steps, then fine-tuned on
#       SpamAssassin (ham / spam) and on authorship (State of the Union or Moby
#       Dick passage); the conv models also without pretraining; and the
#       pretrained softmax T5 converted to lightweight conv (with and without
#       attention transfer) and fine-tuned the same way.
# Needs .debs (scripts/gpu-debs.sh) for the build; the experiment needs
# .gpu-data (scripts/gpu-data.sh, then tools/make_conv_tasks.py data .gpu-data).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}/conv
recast=${RECAST:-build-gpu/recast}
python=${PYTHON:-python3}
runs=${RUNS:-$PWD/build-gpu/runs}
mkdir -p "$out" "$runs"

experiment_setup() {
  export RECAST_DATA_DIR=$PWD/.gpu-data
  ex=$out/experiment
  mkdir -p "$ex"
  pre=$runs/pretrain-text
  rm -rf "$pre" && mkdir -p "$pre" && cp .gpu-data/sotu/*.txt "$pre/" && cp .gpu-data/moby-dick/data.txt "$pre/moby-dick.txt"
  dev=${DEVICE:-cuda}; bf16=(--bf16); [[ $dev == cpu ]] && bf16=()
  P=${PRETRAIN_STEPS:-600}; F=${FINETUNE_STEPS:-250}; X=${TRANSFER_STEPS:-100}
  t5=(--arch t5 --set d_model=256 --set d_kv=32 --set num_heads=8 --set d_ff=1024 --set num_layers=4
      --set feed_forward_proj=gated-gelu --tokenizer bytes)
  common=("${bf16[@]}" --device "$dev" --no-progress)
  mods=""
  for stack in encoder decoder; do
    for i in 0 1 2 3; do mods+="${mods:+,}\"$stack.block.$i.layer.0.SelfAttention\""; done
  done
  cfg() {
    case $1 in
      lightweight) echo "{\"kind\":\"lightweight\",\"modules\":[$mods],\"kernel_size\":31}" ;;
      dynamic) echo "{\"kind\":\"dynamic\",\"modules\":[$mods],\"kernel_size\":31}" ;;
      dilated) echo "{\"kind\":\"dilated\",\"modules\":[$mods],\"kernel_size\":8,\"dilation\":4}" ;;
    esac
  }
  note() { echo "$(date +%T) $*" | tee -a "$ex/log.txt"; }
}

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
    experiment-pretrain)
      experiment_setup
      for v in softmax lightweight dynamic dilated; do
        set=(); [[ $v != softmax ]] && set=(--set "recast_conv=$(cfg $v)")
        rm -rf "$runs/pre-$v"
        s0=$SECONDS
        "$recast" pretrain "${t5[@]}" "${set[@]}" --data "$pre" --seq-len 256 --batch-size 64 --steps "$P" \
          --lr 3e-3 --warmup 60 --eval-every "$P" --eval-batches 20 "${common[@]}" --out "$runs/pre-$v" \
          > "$ex/pre-$v.txt" 2>&1 || tail -3 "$ex/pre-$v.txt"
        note "pretrain $v: $((SECONDS - s0)) s"
        cp "$runs/pre-$v/metrics.jsonl" "$ex/pre-$v-metrics.jsonl"
      done
      rm -rf "$runs/conv-plain" "$runs/conv-transfer"
      "$recast" convert --recipe conv --model "$runs/pre-softmax" --out "$runs/conv-plain" --kernel 31 \
        --device "$dev" --data "$pre" --seq-len 256 --batch-size 32 > "$ex/convert-plain.txt" 2>&1
      "$recast" convert --recipe conv --model "$runs/pre-softmax" --out "$runs/conv-transfer" --kernel 31 \
        --device "$dev" --data "$pre" --seq-len 256 --batch-size 32 --transfer-steps "$X" --transfer-lr 3e-3 \
        > "$ex/convert-transfer.txt" 2>&1
      for c in plain transfer; do cp "$runs/conv-$c/recast_manifest.json" "$ex/convert-$c-manifest.json"; done
      note "converted"
      ;;
    experiment-spam|experiment-author)
      experiment_setup
      task=${job#experiment-}
      {
        data=.gpu-data/$task.jsonl
        for m in ${MODELS:-pre-softmax pre-lightweight pre-dynamic pre-dilated conv-plain conv-transfer scratch-softmax \
                 scratch-lightweight scratch-dynamic scratch-dilated}; do
          rm -rf "$runs/ft-$task-$m"
          s0=$SECONDS
          from=$runs/$m
          if [[ $m == scratch-* ]]; then
            # Without pretraining: a fresh checkpoint of the same model (one
            # span-corruption step at lr 1e-8 writes it), then the same fine-tune.
            v=${m#scratch-}; set=(); [[ $v != softmax ]] && set=(--set "recast_conv=$(cfg $v)")
            from=$runs/init-$v
            rm -rf "$from"
            "$recast" pretrain "${t5[@]}" "${set[@]}" --data "$pre" --seq-len 256 --batch-size 8 --steps 1 \
              --lr 1e-8 --warmup 0 --eval-batches 1 "${common[@]}" --out "$from" > "$ex/init-$v.txt" 2>&1
          fi
          "$recast" finetune --model "$from" --data "$data" --seq-len 256 --batch-size 32 --steps "$F" \
            --lr 1e-3 --warmup 25 --eval-batches 10 "${common[@]}" --out "$runs/ft-$task-$m" > "$ex/ft-$task-$m.txt" 2>&1
          rc=$?
          "$recast" eval --model "$runs/ft-$task-$m" --data "$data" --split test --device "$dev" "${bf16[@]}" --json \
            > "$ex/eval-$task-$m.json" 2>> "$ex/ft-$task-$m.txt"
          note "$task $m: rc $rc, $((SECONDS - s0)) s, $(tr -d ' \n' < "$ex/eval-$task-$m.json" | head -c 200)"
          cp "$runs/ft-$task-$m/metrics.jsonl" "$ex/ft-$task-$m-metrics.jsonl" 2>/dev/null
        done
      }
      ;;
    *)
      echo "unknown job $job" >&2
      exit 2
      ;;
  esac
done
