# Two entry points for a fresh machine (see README):
#   make examples   set up .venv, fetch the model, render the four documented examples into out/examples
#   make test       set up .venv, fetch the model, lint, type-check and run the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLES_OUT ?= out/examples

.PHONY: setup model examples test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

model: $(STAMP)
	$(BIN)/compositor models fetch

examples: model
	@mkdir -p $(EXAMPLES_OUT)
	@for body in fixtures/requests/example-*.json; do \
		name=$$(basename $$body .json); \
		echo "$$name -> $(EXAMPLES_OUT)/$$name.png"; \
		$(BIN)/compositor render $$body -o $(EXAMPLES_OUT)/$$name.png --timings || exit $$?; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# pytest exits 5 when it collected no test; that is a failure here, not a pass.
test: model lint
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: model
	$(BIN)/python benchmarks/bench_removebg.py
