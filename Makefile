# Two entry points for a fresh clone:  make demo  (set up + dvc repro)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install clean-venv orchestrate serve

install: $(STAMP)

# torch first and exactly pinned (pip takes the machine's local wheels), then everything
# else against the full lock so nothing pulls another multi-GB torch build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[train,serve,dev]"
	touch $@

demo: $(STAMP)
	dvc repro
	msjoe db rebuild

# Two pytest-xdist workers: the tests run torch on one thread (tests/conftest.py), so a serial
# run leaves one of two cores idle. --dist loadfile keeps each file on one worker, so a
# module-scoped fixture (a tiny dvc repro, a shared world) is still built once.
test: $(STAMP)
	python -m pytest -q -n 2 --dist loadfile

clean-venv:
	rm -rf $(VENV)

# local Prefect server + process worker with the weekly retraining deployment (UI http://127.0.0.1:4200)
orchestrate: $(STAMP)
	python infra/prefect/serve.py
