# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck unit bench sim clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/papaya-trio serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -X dev -m pytest

test: lint typecheck unit

# The paper's experiment, default sweep: trio, trio-batched and fork sinks, N = 1..64, 60 s
# per trial (about 25 minutes; see docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python -m papaya_trio.bench

# The simulation's long run: every profile for each of SIM_SEEDS (12,000 runs by default,
# about 5 core-hours; sim/README.md has the speeds), one worker per core, at low priority.
SIM_SEEDS ?= 0..1999
sim: $(STAMP)
	nice -n 10 $(BIN)/python -m sim --seeds $(SIM_SEEDS) --profile all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
