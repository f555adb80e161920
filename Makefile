# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs (pinned in constraints.txt).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,executor,worker]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q --durations=15

# No Airflow, no SeaweedFS: the logic above the store runs on the in-memory store.
unit: $(STAMP)
	$(BIN)/pytest -q -m "not e2e and not seaweed"

demo: $(STAMP)
	$(BIN)/python demo/run.py

bench: $(STAMP)
	$(BIN)/python bench/e2e_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .demo

# Airflow's example DAGs under LocalExecutor and MailboxExecutor, compared (tests/conformance);
# ONLY=a.py,b.py runs a few. The table goes to .demo/conformance/conformance.md.
.PHONY: conformance
conformance: $(STAMP)
	CONFORMANCE_ONLY=$(ONLY) CONFORMANCE_REPORT=.demo/conformance $(BIN)/pytest -q -s tests/test_e2e_conformance.py
