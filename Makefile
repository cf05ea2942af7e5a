# Two commands matter: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-slow golden demo blender bench clean

venv: $(STAMP)

# (Re)create the environment when it is missing or pyproject.toml changed.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Blender for the data pipeline (Debian's package; skipped when one is on PATH or we are not root).
blender:
	@{ command -v blender >/dev/null 2>&1 && dpkg -s python3-numpy >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Blender with apt ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends blender python3-numpy >/dev/null; \
	  else echo "Blender not found and cannot install it (not root or no apt): Blender tests will skip"; fi; }

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

golden: $(STAMP)
	$(PY) -m pytest -k golden -v

bench: $(STAMP)
	$(PY) bench/bench_denoiser.py

clean:
	rm -rf outputs .pytest_cache

# The whole pipeline on a CPU: render -> train (smoke) -> generate -> reconstruct -> evaluate -> report.html
demo: $(STAMP) blender
	$(PY) demo.py
