# make setup | bench | test | leaderboard | bench-regress | speed | gpu-wheels
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch first, pinned: a bare `pip install fastai` would pull a multi-GB CUDA build of the newest torch.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

# Offline copies beside the checkout (as on the project's machines) are used when present;
# set FTBENCH_DATA / FTBENCH_WEIGHTS yourself to point elsewhere, or leave them empty to download.
FTBENCH_DATA    ?= $(wildcard $(CURDIR)/../shared/data)
FTBENCH_WEIGHTS ?= $(wildcard $(CURDIR)/../shared/weights)
export FTBENCH_DATA FTBENCH_WEIGHTS

RESULTS ?=
PROFILE ?= auto
SEEDS   ?= 3
ARGS    ?=

.PHONY: setup bench test leaderboard bench-regress speed gpu-wheels gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	touch $@

# Every experiment of bench/declare/experiments.py that make bench runs (W1-W4, W7), SEEDS seeds each, then the leaderboard. A failed run is an error
# row; the leaderboard is rendered anyway and the target fails at the end if any run failed. ARGS go to every
# script (e.g. ARGS="--cluster ray", or ARGS="-- --precision fp32").
bench: setup
	$(BIN)/python bench/suite.py --profile $(PROFILE) --seeds $(SEEDS) $(if $(RESULTS),--results $(RESULTS)) $(ARGS)

leaderboard: setup
	$(BIN)/python bench/leaderboard.py $(if $(RESULTS),--results $(RESULTS))

# Two test processes of one thread each: the suite is small tensors and subprocesses, which a thread pool per
# process only makes contend for the two cores.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --benchmark-disable -n 2 --dist load --maxschedchunk 1

# Speed regressions: time the benchmark suite (each benchmark beside a calibration workload), save the run under
# .benchmarks/, and say in one line whether any benchmark got slower than the runs saved before it, past its own
# measured noise, in a confirmation pass too (bench/tools/regress.py).
bench-regress: setup
	$(BIN)/python -m pytest -q tests/benchmarks --benchmark-only --benchmark-autosave
	$(BIN)/python bench/tools/regress.py

speed: setup
	$(BIN)/python bench/tools/speed.py

# Wheels of fastai and its pure-Python needs, for a GPU machine that has torch and timm but no fastai or network.
gpu-wheels:
	bash bench/tools/gpu_check.sh --fetch

gpu-check: setup
	bash bench/tools/gpu_check.sh
