PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench tiny-model clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
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
