# Two entry points: `make demo` and `make test`. Both create .venv when missing and (re)install the
# project only when pyproject.toml or setup.py changed since the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# named data sets (cifar10, fsdd, ...) resolve under ZOO_DATA; the real data sits beside the checkout here
ZOO_DATA ?= $(abspath ../shared/data)
export ZOO_DATA

.PHONY: demo test test-kernels test-rest test-slow test-gpu install clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	ZOO_OFFLINE=1 $(VENV)/bin/zoo demo

# Kernel tests run the Triton kernels through the CPU interpreter, which must be switched on before
# triton is imported: they get a pytest process of their own.
test: $(STAMP)
	$(MAKE) --no-print-directory test-kernels test-rest

test-kernels: $(STAMP)
	TRITON_INTERPRET=1 ZOO_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not gpu" tests/kernels

test-rest: $(STAMP)
	ZOO_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not gpu" tests --ignore=tests/kernels

test-slow: $(STAMP)
	TRITON_INTERPRET=1 ZOO_OFFLINE=1 $(PY) -m pytest -q -m "slow" tests/kernels || test $$? -eq 5
	ZOO_OFFLINE=1 $(PY) -m pytest -q -m "slow" tests --ignore=tests/kernels

# On a CUDA machine: every GPU test (compiled Triton, realistic shapes).
test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
