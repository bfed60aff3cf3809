# Two commands do all set-up on a fresh machine (Python >= 3.11 on PATH as python3; the GPU
# rehearsal of `make test` also needs Python 3.12, the GPU machine's, as python3.12 or GPU_PYTHON):
#   make quickstart   # installs into .venv, trains AlignMixup on the bundled digits data
#   make test         # installs into .venv, runs ruff, the test suite and the install checks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/alignmix_quickstart
# Each install takes what its extras need, at the versions requirements.txt pins (constraints).
PIP_INSTALL := $(PY) -m pip install -q -c requirements.txt

.PHONY: install install-test lint test suite check-base-install rehearse-gpu quickstart bench

# The commands need the `train` extra; tfds datasets `tfds`; preparing them (and the tests that
# do) `prepare` (TensorFlow).
$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[train]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[train,tfds,prepare,dev]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

lint: install-test
	$(PY) -m ruff check alignmix_jax experiments tests benchmarks

# The suite and the two install checks run side by side (each install check builds its own venv);
# a GNU make that can (4.0 on) prints each one's output whole when it ends.
OUTPUT_SYNC := $(if $(filter output-sync,$(.FEATURES)),--output-sync=target)
test: lint
	$(MAKE) --jobs=3 $(OUTPUT_SYNC) suite check-base-install rehearse-gpu

# The suite runs in TEST_WORKERS processes (pytest-xdist), each taking a whole test file at a time
# so that a file's shared runs (the two-host run, the killed run) are made once: one process alone
# leaves a core idle for much of its importing and compiling.
TEST_WORKERS ?= 2
suite: install-test
	$(PY) -m pytest -q --numprocesses=$(TEST_WORKERS) --dist=loadfile --durations=15 tests

# A fresh venv with the base install only runs the README's align_mix snippet and a gradient.
check-base-install:
	bash .ci/check_base_install.sh

# The GPU machine's packages, no TensorFlow, no tfds, plus the wheels a device call carries:
# benchmarks/device_check.py --tiny runs to the end.
rehearse-gpu:
	bash .ci/rehearse_gpu.sh

quickstart: install
	$(PY) -m alignmix_jax.main --config experiments/quickstart.py --workdir $(WORKDIR)

bench: install
	$(PY) benchmarks/bench_align_mix.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_input.py
	$(PY) benchmarks/bench_input_imagenet.py
