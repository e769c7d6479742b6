#!/usr/bin/env bash
# CPU benchmarks, recorded with date and machine under bench/results/:
#  1. `recast inspect` on a 1 GB checkpoint (single file and 5 shards): median
#     wall time of the whole command over 20 runs, beside the time to read the
#     file once (what a loader that touches the data would pay) and the
#     start-up of a LibTorch-linked binary (recast-engine --version).
#  2. fp32 matrix products through LibTorch with OpenBLAS vs reference BLAS.
#  3. factorized vs dense Linear (bench_factorized linear: d 768 / 4096,
#     1 / 128 / 8192 tokens, rank d/16..d/2), one JSON line per shape.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
day=$(date -u +%Y-%m-%d)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
machine="$cpu, $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
work=out/bench
mkdir -p "$work" bench/results

ckpt=$work/gpt2-1gb.safetensors
shards=$work/gpt2-1gb-sharded
[[ -f $ckpt ]] || "$build/bench/make_checkpoint" "$ckpt" --size 1GB
[[ -d $shards ]] || "$build/recast" repack -q "$ckpt" "$shards" --max-shard-size 220MB

# median_ms N CMD...: median wall time of N runs, in milliseconds.
median_ms() {
  local n=$1; shift
  local times=()
  for ((i = 0; i < n; i++)); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

bytes=$(stat -c %s "$ckpt")
tensors=$("$build/recast" inspect "$ckpt" --json --summary | grep -m1 num_tensors | tr -dc 0-9)
inspect_single=$(median_ms 20 "$build/recast" inspect "$ckpt" --summary)
inspect_table=$(median_ms 20 "$build/recast" inspect "$ckpt")
inspect_shards=$(median_ms 20 "$build/recast" inspect "$shards" --summary)
engine_start=$(median_ms 10 "$build/recast-engine" --version)
read_once=$(median_ms 3 cat "$ckpt")

result=bench/results/$day-cpu-inspect.md
cat > "$result" <<MD
# recast inspect on a 1 GB checkpoint

Date: $day. Machine: $machine. Build: $("$build/recast" --version).
Command: \`scripts/bench-cpu.sh\` (median wall time of the whole command, page cache warm).

Checkpoint: GPT-2 layout, $tensors tensors, $bytes bytes, F32 (bench/make_checkpoint --size 1GB).

| what | median ms |
|---|---|
| \`recast inspect FILE --summary\` (20 runs) | $inspect_single |
| \`recast inspect FILE\` with the per-tensor table (20 runs) | $inspect_table |
| \`recast inspect DIR --summary\`, 5 shards + index (20 runs) | $inspect_shards |
| start-up of the LibTorch-linked \`recast-engine --version\` (10 runs) | $engine_start |
| \`cat FILE > /dev/null\`: reading the data once, from the page cache (3 runs) | $read_once |

inspect maps the file and parses the header only; no tensor data is read or copied.
MD
echo "wrote $result"; cat "$result"

result=bench/results/$day-cpu-blas.md
{
  echo "# fp32 matrix products through LibTorch (n x n x n), CPU"
  echo
  echo "Date: $day. Machine: $machine. Program: bench/bench_blas.cpp (median of >= 5 runs and >= 1 s after a warm-up)."
  echo
  echo "## OpenBLAS (libopenblas0-pthread, the libblas.so.3 alternative)"
  echo '```'; "$build/bench/bench_blas" 256 512 1024 2048; echo '```'
  echo "## OpenBLAS with OPENBLAS_CORETYPE=SkylakeX (AVX-512 kernels)"
  echo '```'; OPENBLAS_CORETYPE=SkylakeX "$build/bench/bench_blas" 256 512 1024 2048; echo '```'
  if [[ -f /usr/lib/x86_64-linux-gnu/blas/libblas.so.3 ]]; then
    echo "## Reference BLAS (libblas3, forced with LD_LIBRARY_PATH)"
    echo '```'; LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/blas "$build/bench/bench_blas" 256 512 1024; echo '```'
  fi
} > "$result"
echo "wrote $result"; cat "$result"

result=bench/results/$day-cpu-factorized-linear.jsonl
"$build/bench/bench_factorized" linear --device cpu --dtype fp32 > "$result"
echo "wrote $result (machine: $machine)"; cat "$result"
