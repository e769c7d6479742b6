#!/usr/bin/env bash
# Downloads (does not install) the Debian -dev packages the build needs into
# .debs/, which travels to the GPU machine (no package registry there).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs
cd .debs
apt-get download libgtest-dev libgmock-dev googletest nlohmann-json3-dev libcli11-dev libpcre2-dev\
  dataset-fashion-mnist libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libstb-dev libstb0 2>&1 | grep -v "^Get:" || true
ls -1
