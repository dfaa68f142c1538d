# tilesegd: two commands do all the set-up on a fresh clone.
#   make demo   creates .venv, trains a small model, runs the main job on sample scenes
#   make test   creates .venv and runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch / torchvision are pinned to the releases on this machine's disk; never let a resolver
# pull another torch (pip's constraint file, where present, caps them too).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-explore test-slow test-all lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH_PINS)
	touch $@

demo: venv
	$(PY) -m tilesegd.demo

test: venv
	$(PY) -m pytest -q

# property tests with new random examples on every run, ten times as many (tests/conftest.py)
test-explore: venv
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

test-all: venv
	$(PY) -m pytest -q -m "slow or not slow"

lint: venv
	$(VENV)/bin/ruff check tilesegd tests benchmarks
	$(VENV)/bin/ruff format --check tilesegd tests benchmarks
	$(VENV)/bin/lint-imports

bench: venv
	$(PY) -m pip install --quiet -e '.[bench]' $(TORCH_PINS)
	$(PY) benchmarks/bench.py

clean:
	rm -rf demo .pytest_cache .ruff_cache
