# The targets here are what CI and the README run, unchanged.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup test lint demo bench bench-model bench-scale clean

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

# Until the daemon lands, the demo is the offline loop: generate -> train -> calibrate -> evaluate -> score.
DEMO := demo-out
DET := $(VENV)/bin/detector
demo: setup
	mkdir -p $(DEMO)
	$(DET) generate --seed 1 --out $(DEMO)/train.jsonl
	$(DET) generate --seed 2 --out $(DEMO)/calibrate.jsonl
	$(DET) generate --seed 3 --out $(DEMO)/test.jsonl
	$(DET) train --data $(DEMO)/train.jsonl --out $(DEMO)/model.ckpt --epochs 10
	$(DET) calibrate --checkpoint $(DEMO)/model.ckpt --data $(DEMO)/calibrate.jsonl \
	    --method isotonic --threshold max-f1 --out $(DEMO)/model.calibrated.ckpt
	$(DET) evaluate --checkpoint $(DEMO)/model.calibrated.ckpt --data $(DEMO)/test.jsonl --out $(DEMO)/eval
	$(DET) replay $(DEMO)/test.jsonl --offline --checkpoint $(DEMO)/model.calibrated.ckpt --out $(DEMO)/scores.jsonl
	@echo
	@echo "plots:   $(DEMO)/eval/reliability.png $(DEMO)/eval/precision_recall.png $(DEMO)/eval/timeline.png"
	@echo "metrics: $(DEMO)/eval/metrics.json"
	@echo "scores:  $(DEMO)/scores.jsonl (one record per window)"

# The whole serving path on the embedded broker, in one run: figures and ratios in bench/out/results.json.
bench: setup
	$(PY) bench/e2e.py

bench-model: setup
	$(PY) bench/model.py

bench-scale: setup
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) demo-out bench/out
