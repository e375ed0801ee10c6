# Every target installs what it needs into .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# test processes (pytest-xdist; a file's tests stay together, so its fixtures are built
# once); each holds a few GiB at peak
TEST_WORKERS ?= 2

.PHONY: demo test test-slow bench notebooks docs lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/coreg demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/kalman_speed.py
	$(PY) benchmarks/make_results_table.py $$(ls -t benchmarks/results/kalman_speed-*.json | head -1)
	$(PY) -m pip install --quiet "simuk>=0.2"
	$(PY) benchmarks/study_throughput.py --simuk-replicates 2 --simuk-budget 3600

# every notebook, full size (minutes to half an hour each on 2 cores); figures in notebook_output/
notebooks: $(STAMP)
	for nb in notebooks/[0-9][0-9]_*.py; do \
		COREG_OUT=notebook_output/$$(basename $$nb .py) $(PY) $$nb || exit 1; done

# API reference from the docstrings (pdoc); any pdoc warning fails the build
docs: $(STAMP)
	$(PY) docs/build.py docs/_build

lint: $(STAMP)
	$(VENV)/bin/ruff check coregulation tests benchmarks docs notebooks

clean:
	rm -rf $(VENV) .jax_cache demo_output notebook_output real_data_output docs/_build
