# The targets here are what CI and the README run, unchanged.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup test lint demo bench bench-model bench-scale bench-memory bench-quality clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: an open range would pull a multi-GB CUDA build.
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check detector tests bench
	$(VENV)/bin/ruff format --check detector tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The whole loop end to end: embedded broker, bundled model, serve, a replay with injected events, alerts
# as they arrive, a summary; finishes by itself in about 2.5 min and leaves no process behind.
DEMO := demo-out
DET := $(VENV)/bin/detector
demo: setup
	$(DET) demo --out $(DEMO)

# The whole serving path on the embedded broker, in one run: figures and ratios in bench/out/results.json.
bench: setup
	$(PY) bench/e2e.py

bench-model: setup
	$(PY) bench/model.py

bench-scale: setup
	$(PY) bench/scale.py

# Peak RSS of the daemon under a stream of maximum-size messages (plain and gzip) against ordinary windows.
bench-memory: setup
	$(PY) bench/memory.py

# Detection on real labelled telemetry: the trained product against simple baselines (~40 min on 2 busy cores).
# DATA is a folder outside the repository with the public datasets; without it the bench says how to get them.
DATA ?=
bench-quality: setup
	$(PY) bench/quality.py --data "$(DATA)"

clean:
	rm -rf $(VENV) demo-out bench/out
