# Every target installs what it needs into .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/coreg demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/kalman_speed.py
	$(PY) benchmarks/make_results_table.py $$(ls -t benchmarks/results/kalman_speed-*.json | head -1)

lint: $(STAMP)
	$(VENV)/bin/ruff check coregulation tests benchmarks

clean:
	rm -rf $(VENV) demo_output
