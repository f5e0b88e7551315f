# `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bundle install-desktop clean gpu-wheels

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) install -q --disable-pip-version-check --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) tools/check_install.py requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app

# Tests that compile OpenVINO models in-process run in a pytest process of their own: a fork later in a process
# that holds OpenVINO's CPU threads (the trainer's DataLoader workers) segfaulted.
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not openvino" $(PYTEST_ARGS)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m openvino $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/extract.py

# One-folder bundle in dist/dinoscope/ (~3 min), then a smoke check of the frozen executable.
bundle: $(STAMP)
	$(VENV)/bin/pyinstaller --noconfirm --clean pyinstaller.spec
	dist/dinoscope/dinoscope-cli --help
	dist/dinoscope/dinoscope-cli models

# Wheels bench/gpu_check.sh installs on a CUDA machine without a package index (bench/wheels/, not in git).
gpu-wheels: $(STAMP)
	PYTHON=$(PY) bash bench/gpu_wheels.sh

# Menu entry + icons for the current user; runs the bundle if built, else .venv/bin/dinoscope.
install-desktop: $(STAMP)
	bash assets/install_desktop.sh

clean:
	rm -rf build dist $(VENV)
