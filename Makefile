# Two commands do everything on a fresh clone:
#   make demo   create .venv, install pinned dependencies, train + evaluate on the built-in synthetic data
#   make test   the same .venv plus the test extras, then pytest
# Stamp files make re-runs skip installs that are already done; they are redone when
# setup.cfg or the constraints change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := requirements/constraints.txt
DEMO_DIR ?= runs/demo
DATA_DIR ?= data/synthetic
# Two workers, one test file each at a time (files share compiled models through module fixtures;
# files that compile the same programs go to one worker as one unit: tests/conftest.py
# SHARED_PROGRAM_GROUPS), handed out in the order tests/conftest.py sorts them (longest first).
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: demo test test-fast install install-test lock clean wheels bench-gpu test-jax-latest

# Pure-Python wheels a GPU machine without a registry lacks (it has jax, flax, optax, orbax, torch,
# absl, PyYAML, Pillow; not ml_collections), for `benchmarks/gpu.sh` there (see BENCHMARKS.md).
WHEELS := ml_collections==1.1.0

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" setuptools wheel

$(VENV)/.stamp-base: $(VENV)/bin/python setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test,parity]'
	touch $@

install: $(VENV)/.stamp-base
install-test: $(VENV)/.stamp-test

demo: $(VENV)/.stamp-base
	$(PY) scripts/demo.py --data_dir $(DATA_DIR) --workdir $(DEMO_DIR)

# The whole suite (what CI runs), then its 15 slowest tests.
test: $(VENV)/.stamp-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 \
	  $(PYTEST_ARGS)

# The edit loop: everything not marked `slow` (the end-to-end trainings and scripts).
test-fast: $(VENV)/.stamp-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not slow' \
	  --durations=15 $(PYTEST_ARGS)

# Rewrite the constraints from the current .venv after a deliberate upgrade.
lock: $(VENV)/.stamp-test
	{ sed -n '1,/^# Regenerate/p' $(CONSTRAINTS); $(PIP) freeze --exclude-editable | sed 's/+cpu$$//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(VENV_LATEST) $(DEMO_DIR) .pytest_cache

# The tests on the newest JAX instead of the pinned 0.10.2, in a separate venv. JAX 0.11 dropped
# Python 3.11, so this needs a Python >= 3.12 (PYTHON_LATEST); nothing else is pinned there, so pip
# takes the newest flax / optax / orbax that fit. JAX_LATEST picks the release, e.g.
#   make test-jax-latest JAX_LATEST='jax==0.11.2 jaxlib==0.11.2'
# LATEST_TESTS narrows the run (default: the whole suite).
VENV_LATEST := .venv-jax-latest
PYTHON_LATEST ?= python3.12
JAX_LATEST ?= jax jaxlib
LATEST_TESTS ?= tests

test-jax-latest:
	test -x $(VENV_LATEST)/bin/python || $(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' $(JAX_LATEST)
	$(VENV_LATEST)/bin/python -m pip freeze | grep -i -E '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy)=='
	$(VENV_LATEST)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  $(PYTEST_ARGS) $(LATEST_TESTS)

wheels: $(VENV)/bin/python
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl $(WHEELS)

# The accelerator benchmark (SMALL=1 for its CPU-sized mode).
bench-gpu: $(VENV)/.stamp-test
	benchmarks/gpu.sh
