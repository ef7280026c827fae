# mlvault — thin wrapper over CMake. Every goal installs what is missing first
# (scripts/deps.sh, scripts/fetch-model.sh), configures and builds.
#   make run    demo: a local registry holding the real SmolLM2 model
#   make test   builds and runs every test, then again under ASan+UBSan
#   make bench  benchmarks (JSON lines): ingest vs openssl/dd, engine and quantize vs llama.cpp

BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc)
MAKEFLAGS  += --no-print-directory
MODEL       = $(HOME)/.cache/mlvault/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: all deps deps-llama-cpp build build-asan run test test-fast bench clean

all: build

deps:
	@./scripts/deps.sh
	@./scripts/fetch-model.sh >/dev/null

# llama.cpp (llama-cpp-python, built from source: minutes, once) — the independent
# reference some tests load models with, and the peer of bench/engine.
deps-llama-cpp: deps
	@./scripts/deps-llama-cpp.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLV_MODEL_GGUF=$(MODEL)

$(BUILD_ASAN)/CMakeCache.txt:
	cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLV_SANITIZE=ON -DMLV_MODEL_GGUF=$(MODEL)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps $(BUILD_ASAN)/CMakeCache.txt
	cmake --build $(BUILD_ASAN) -j $(JOBS)

run: build
	./scripts/demo.sh $(BUILD)/mlvault

test-fast: build
	cd $(BUILD) && ctest --output-on-failure

test: deps-llama-cpp build build-asan
	@echo "== tests (release build) =="
	cd $(BUILD) && ctest --output-on-failure
	@echo "== tests (ASan + UBSan build) =="
	cd $(BUILD_ASAN) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure

bench: deps-llama-cpp build
	./bench/ingest $(BUILD)/mlvault
	./bench/engine --bin $(BUILD)/mlvault
	./bench/quantize --bin $(BUILD)/mlvault
	./bench/registry $(BUILD)/mlvault
	./bench/serve $(BUILD)/mlvault

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
