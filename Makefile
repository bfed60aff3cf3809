# Two commands do all set-up on a fresh machine (Python >= 3.11 on PATH as python3):
#   make quickstart   # installs into .venv, trains AlignMixup on the bundled digits data
#   make test         # installs into .venv, runs ruff and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/alignmix_quickstart

.PHONY: install install-prepare test lint quickstart bench

# Training needs no TensorFlow; preparing tfds datasets (and the tests that do) installs it too.
$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e '.[dev]'
	touch $@

$(VENV)/.installed-prepare: $(VENV)/.installed requirements-prepare.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-prepare.txt
	touch $@

install: $(VENV)/.installed

install-prepare: $(VENV)/.installed-prepare

lint: install
	$(PY) -m ruff check alignmix_jax experiments tests benchmarks

test: lint install-prepare
	$(PY) -m pytest -q tests

quickstart: install
	$(PY) -m alignmix_jax.main --config experiments/quickstart.py --workdir $(WORKDIR)

bench: install
	$(PY) benchmarks/bench_align_mix.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_input.py
	$(PY) benchmarks/bench_input_imagenet.py
