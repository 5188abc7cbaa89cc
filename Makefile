PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet -c constraints.txt
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-slow bench bench-auto install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/converge train examples/digits.py --out runs/demo --force

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PY) bench/overhead.py

# The bench extra (optuna) goes in its own stamp, so `make test` never installs or needs it.
$(BENCH_STAMP): $(STAMP)
	$(PIP) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-auto: $(BENCH_STAMP)
	$(PY) bench/auto.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
