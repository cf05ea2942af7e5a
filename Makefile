# Two commands matter: `make demo` and `make test` (the quick loop). CI runs `make sysdeps test-all`.
# Everything else is a building block.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= disabled
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-all test-slow golden demo sysdeps blender bench clean

# System packages (Debian names) the whole suite needs: Blender for the data pipeline, Chromium and its
# driver for the web-app browser tests, SLURM + munge for the cluster tests, venv for a fresh machine.
SYSDEPS ?= python3-venv blender python3-numpy chromium chromium-driver slurm-wlm munge
# Safety net for `make test-all`: a test running longer than this many seconds fails (pytest-timeout).
TEST_TIMEOUT ?= 1200

venv: $(STAMP)

# (Re)create the environment when it is missing or pyproject.toml changed.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Install the missing ones of $(SYSDEPS) with apt (idempotent: a package counts as present when dpkg knows
# it or a command of that name is on PATH; nothing happens when all are). Needs root and apt-get; otherwise
# it says what is missing: those tests then skip (and fail under CI, see tests/conftest.py).
sysdeps:
	@missing=$$(for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || command -v $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSDEPS)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing with apt:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "missing system packages:" $$missing "(cannot install: not root or no apt-get); their tests will skip"; fi

# Blender only (what `make demo` needs).
blender:
	@$(MAKE) --no-print-directory sysdeps SYSDEPS="blender python3-numpy"

# The quick loop: everything but the tests marked slow (pyproject's addopts deselect them).
test: $(STAMP)
	$(PY) -m pytest

# Everything, slow tests included (what CI runs), with a per-test time limit and the slowest tests listed.
test-all: $(STAMP)
	$(PY) -m pytest -m "" --timeout=$(TEST_TIMEOUT) --durations=25

test-slow: $(STAMP)
	$(PY) -m pytest -m slow --timeout=$(TEST_TIMEOUT) --durations=0

golden: $(STAMP)
	$(PY) -m pytest -k golden -v

bench: $(STAMP)
	$(PY) bench/bench_denoiser.py

clean:
	rm -rf outputs .pytest_cache

# The whole pipeline on a CPU: render -> train (smoke) -> generate -> reconstruct -> evaluate -> report.html
demo: $(STAMP) blender
	$(PY) demo.py
