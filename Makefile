# Two commands on a fresh machine: `make serve` and `make test`.
#
# `make serve` installs only what serving needs (the package and its runtime dependencies);
# `make test` adds the dev and bench extras and checks the system packages the tests use
# (.ci/system-packages: Chromium, its driver, tmux, redis-server). Each install has its own
# stamp, so `make serve` then `make test` (or the other way round) in one clone installs
# each part once: the test stamp depends on the serve stamp, never the reverse.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.serve-installed
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: serve test lint typecheck unit bench sim clean system-packages

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

# Options for the server: make serve ARGS="--tcp-port 7800 --http-port 8081"
ARGS ?=

serve: $(SERVE_STAMP)
	$(BIN)/papaya-trio serve $(ARGS)

system-packages:
	.ci/system-packages

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-packages
	$(BIN)/python -X dev -m pytest

test: system-packages lint typecheck unit

# The paper's experiment, default sweep: trio, trio-batched and fork sinks, N = 1..64, 60 s
# per trial (about 25 minutes; see docs/benchmarks.md).
bench: $(SERVE_STAMP)
	$(PIP) install -e '.[bench]'
	$(BIN)/python -m papaya_trio.bench

# The simulation's long run: every profile for each of SIM_SEEDS (10,000 runs by default,
# about 1 h 50 min on 2 cores; sim/README.md, "Sweeps run"), one worker per core, at low priority.
SIM_SEEDS ?= 0..999
sim: $(STAMP)
	nice -n 10 $(BIN)/python -m sim --seeds $(SIM_SEEDS) --profile all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
