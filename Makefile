# Set-up and the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras beyond the test tools, comma-separated: `make install EXTRAS=cluster` adds the PostgreSQL
# driver and MLflow's basic-auth dependencies (README, "On a Ray cluster").
EXTRAS ?=
comma := ,
PIP_EXTRAS := test$(if $(strip $(EXTRAS)),$(comma)$(strip $(EXTRAS)))
STAMP := $(VENV)/.installed$(if $(strip $(EXTRAS)),-$(subst $(comma),-,$(strip $(EXTRAS))))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE ?= disabled
export TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S := 0

.PHONY: install test test-slow test-browser demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	# torch and torchvision first: pip takes these two from this machine's disk. --no-compile: the
	# modules a run imports get their bytecode then, not every file of every package now (torch
	# alone: 126 s -> 100 s on 2 cores; docs/benchmarks.md).
	$(BIN)/pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --no-compile -e '.[$(PIP_EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

demo: $(STAMP)
	$(BIN)/iclf demo

clean:
	rm -rf runs .pytest_cache

test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests
