PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet -c constraints.txt
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: demo test test-slow test-faults test-postgres test-browser bench bench-auto bench-tune docs install clean

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

# The fault battery (tests/faults/battery.py): kills, full and read-only disks, corrupt files, concurrent
# commands, bad input, torn journals, Ctrl-C and a storage outage, on real processes; prints a table of cases,
# held, failed, skipped. As root it mounts a small loop file system (scripts/setup-loopfs.sh) and starts its
# own PostgreSQL server (scripts/setup-postgres.sh); elsewhere those cases are skipped with the reason.
test-faults: $(STAMP)
	$(PY) tests/faults/battery.py $(ARGS)

# A real PostgreSQL server on 127.0.0.1 (installed with apt-get when missing), then the tests that use it.
PG_ROOT ?= /tmp/converge-pg
test-postgres: $(STAMP)
	CONVERGE_PG_ROOT=$(PG_ROOT) bash scripts/setup-postgres.sh
	CONVERGE_TEST_PG_URL_FILE=$(PG_ROOT)/url $(PY) -m pytest -q -m postgres

# Debian's chromium (installed with apt-get when missing), then the tests that render report.html in it.
test-browser: $(STAMP)
	bash scripts/setup-browser.sh
	$(PY) -m pytest -q -m browser

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/memory.py

# The bench extra (optuna) goes in its own stamp, so `make test` never installs or needs it.
$(BENCH_STAMP): $(STAMP)
	$(PIP) -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-auto: $(BENCH_STAMP)
	$(PY) bench/auto.py $(ARGS)

bench-tune: $(BENCH_STAMP)
	$(PY) bench/tune.py $(ARGS)

# The documentation site (docs/, mkdocs.yml) into site/. The docs extra (MkDocs, Material, mkdocstrings) goes in
# its own stamp, as the bench extra does. --strict: a broken link, anchor, include or API reference fails it.
$(DOCS_STAMP): $(STAMP)
	$(PIP) -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# NO_MKDOCS_2_WARNING: Material's end-of-life banner, printed at every build, says nothing about the docs.
# No --quiet: it hides the warnings from the strict count, and a broken link would then pass.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache
