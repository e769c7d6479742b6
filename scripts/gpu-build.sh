#!/usr/bin/env bash
# On the GPU machine: builds recast against the installed PyTorch's LibTorch
# (with CUDA), runs the whole test suite, and prints a compact summary last.
# TARGETS=...: build only those targets (implies SKIP_TESTS).
# CMAKE_EXTRA="-DX=Y ...": more cache settings (e.g. -DRECAST_PROCESS_GROUPS=OFF).
# Needs .debs/ from scripts/gpu-debs.sh (carried along). Results also go to
# $OUT when that is set. SKIP_TESTS=1: build only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/out}
mkdir -p "$out"
deps=/tmp/recast-deps
mkdir -p "$deps"
for f in .debs/*.deb; do dpkg -x "$f" "$deps"; done
python=${PYTHON:-python3}
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' | tee "$out/gpu-env.txt"
nvcc --version | tail -1 | tee -a "$out/gpu-env.txt" || true

# cairo's run-time libraries (and its fonts) from .debs/: an RPATH (not
# RUNPATH: --disable-new-dtags) on recast's programs finds libcairo's own
# dependencies there too, without LD_LIBRARY_PATH for the machine's programs.
# FONTCONFIG_FILE (scripts that run recast export it) points at the fonts.
mkdir -p "$deps/etc/fonts"
printf '<?xml version="1.0"?>\n<fontconfig><dir>%s</dir><cachedir>/tmp/recast-fontconfig</cachedir></fontconfig>\n' \
  "$deps/usr/share/fonts" > "$deps/etc/fonts/recast.conf"
export FONTCONFIG_FILE=$deps/etc/fonts/recast.conf
# NCCL's header for c10d's ProcessGroupNCCL: PyTorch's nvidia-nccl package has it.
nccl_include=$("$python" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "include"))' 2>/dev/null || true)
t0=$(date +%s)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release ${nccl_include:+-DRECAST_NCCL_INCLUDE="$nccl_include"} ${CMAKE_EXTRA:-} \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath,$deps/usr/lib/x86_64-linux-gnu" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr;$deps/usr/lib/x86_64-linux-gnu/cmake;$deps/usr/share/cmake" \
  2>&1 | tee "$out/configure.log" | grep -E "recast:|Error|error" || true
# TARGETS="recast recast-engine bench_factorized": only those (runs that measure).
targets=()
for t in ${TARGETS:-}; do targets+=(--target "$t"); done
cmake --build build-gpu -j"$(nproc)" "${targets[@]}" 2>&1 | tee "$out/build.log" | grep -E "error|warning:" | head -40 || true
t1=$(date +%s)
if [[ -n ${SKIP_TESTS:-} || -n ${TARGETS:-} ]]; then  # the build only, for runs that measure
  echo "build: $((t1 - t0)) s, tests skipped"
  exit 0
fi
set +e
RECAST_FASHION_MNIST_DIR=$deps/usr/share/datasets/fashion-mnist \
  ctest --test-dir build-gpu -j8 --output-on-failure > "$out/ctest.log" 2>&1
rc=$?
set -e
t2=$(date +%s)
build-gpu/recast --version | tee -a "$out/gpu-env.txt"
# Where std::filesystem::remove_all comes from: it must not be libtorch.so's
# copy (see CMakeLists.txt); expected here is a definition in the binary.
objdump -T -C build-gpu/tests/test_io | grep "std::filesystem::remove_all" | tee -a "$out/gpu-env.txt" || true
echo "== summary"
echo "build: $((t1 - t0)) s, tests: $((t2 - t1)) s, ctest exit $rc"
grep -E "tests passed|tests failed|FAILED|Failed" "$out/ctest.log" | tail -20
exit $rc
