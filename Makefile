# `make demo` and `make test` work on a fresh machine: they create .venv (once), install, and run.
PY ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LAKE ?= ./lake

.PHONY: install test test-unit lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# two workers, each test file on one (its module fixtures set up once): most integration tests wait on a
# subprocess or a clock, which the other worker's tests overlap
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# without the tests that start servers or subprocesses (marked `integration`): runs in seconds
test-unit: install
	$(BIN)/python -m pytest -q -m "not integration"

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/biopilot simulate --scenario normal --reactors 1 --seed 1 --lake $(LAKE) --quiet
	$(BIN)/biopilot simulate --scenario overfeed --reactors 1 --seed 1 --lake $(LAKE) --quiet
	$(BIN)/biopilot simulate --scenario contamination --reactors 1 --seed 1 --lake $(LAKE) --quiet
	$(BIN)/biopilot overview --lake $(LAKE) --png $(LAKE)/overview.png
	$(BIN)/biopilot up --lake $(LAKE) --reactors 4 --speed 600

bench: install
	$(BIN)/biopilot bench simulate

clean:
	rm -rf $(VENV) $(LAKE) .pytest_cache .ruff_cache
