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
	# torch and torchvision first: pip takes these two from this machine's disk. Not --no-compile
	# (26 s faster to install torch): these machines set PYTHONDONTWRITEBYTECODE=1, so the bytecode
	# pip compiles now is the only bytecode there will be; without it every process, each Ray worker
	# included, compiles what it imports from source (import torch: 2.2 s -> 3.6 s of CPU).
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[$(PIP_EXTRAS)]'
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
