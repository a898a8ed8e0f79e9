# RadChain developer entry points. Every target bootstraps .venv by itself.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODES ?= 4
SEEDS ?= 10000
TESTNET_DIR ?= testnet
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv sysdeps test soak testnet sim mutants bench lint clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { bash deploy/install-system-deps.sh python && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv and install RadChain with its dev tools

sysdeps: ## install Debian packages the tests use (orthanc, dcmtk, chromium, rsyslog, libsodium, iproute2, curl)
	@bash deploy/install-system-deps.sh test

test: $(STAMP) sysdeps lint ## run the whole test suite (soak runs excluded), after `make lint`
	@$(BIN)/python -m pytest -q -m "not soak" --durations=25 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

soak: $(STAMP) sysdeps ## run the long soak and simulator searches
	@$(BIN)/python -m pytest -q -m soak $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no soak tests"; rc=0; fi; exit $$rc

testnet: $(STAMP) ## run a local 4-node network in the foreground (Ctrl-C stops it)
	@$(BIN)/radchain testnet --nodes $(NODES) --out $(TESTNET_DIR) --run

sim: $(STAMP) ## consensus simulator search: make sim SEEDS=10000 NODES=4
	@$(BIN)/python -m consensus.simulator --seeds $(SEEDS) --nodes $(NODES)

mutants: $(STAMP) ## plant classic PBFT bugs in a copy of consensus/, count the simulator seeds to catch each
	@$(BIN)/python -m consensus.sim.mutants

bench: $(STAMP) ## benchmarks with ratios against a baseline measured in the same run
	@$(BIN)/python -m bench

lint: $(STAMP) ## static checks: ruff, and the layer contracts (import-linter, in pyproject.toml)
	@$(BIN)/ruff check node consensus network bench tests
	@$(BIN)/lint-imports --no-cache

clean: ## remove the virtual environment and local testnet
	rm -rf $(VENV) $(TESTNET_DIR) *.egg-info
