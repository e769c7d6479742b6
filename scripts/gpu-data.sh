#!/usr/bin/env bash
# Makes .gpu-data/ (ignored), the text data sets the GPU runs train on, small
# enough to travel with the working tree (carry ".gpu-data"): the State of the
# Union .txt files and Moby Dick's data.txt. Fashion-MNIST travels as its .deb
# in .debs/ (scripts/gpu-debs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-data.sh sotu moby-dick
rm -rf .gpu-data
mkdir -p .gpu-data/sotu .gpu-data/moby-dick
cp data/sotu/*.txt .gpu-data/sotu/
cp data/moby-dick/data.txt .gpu-data/moby-dick/
du -sh .gpu-data
