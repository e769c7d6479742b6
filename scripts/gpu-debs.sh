#!/usr/bin/env bash
# Downloads (does not install) the Debian -dev packages the build needs into
# .debs/, which travels to the GPU machine (no package registry there).
# cairo comes with its run-time libraries (not its -dev chain: CMakeLists.txt
# finds cairo without pkg-config there); gpu-build.sh links them by RPATH so
# they serve recast alone and the machine's own programs keep theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs
cd .debs
apt-get download libgtest-dev libgmock-dev googletest nlohmann-json3-dev libcli11-dev libpcre2-dev\
  dataset-fashion-mnist libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libstb-dev libstb0 \
  libcairo2-dev libcairo2 libpixman-1-0 libfontconfig1 fontconfig-config fonts-dejavu-core libfreetype6 \
  libpng16-16 libbrotli1 libexpat1 libx11-6 libxcb1 libxcb-render0 libxcb-shm0 libxext6 libxrender1 \
  libxau6 libxdmcp6 libbsd0 libmd0 libsentencepiece-dev libsentencepiece0 libutf8proc-dev libutf8proc2 libgloo-dev 2>&1 | grep -v "^Get:" || true
ls -1
