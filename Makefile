# Two entry points for a fresh machine (see README):
#   make serve      set up .venv, fetch the model, start the local mirror on its embedded defaults
#   make test       set up .venv, fetch the model, lint, type-check and run the whole suite
# and one more: make examples renders the four documented examples into out/examples.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLES_OUT ?= out/examples

.PHONY: setup model models-all serve examples test lint browser bench bench-setup docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

model: $(STAMP)
	$(BIN)/compositor models fetch

# The tests hold u2net and MODNet to their published masks: they need all three models (u2net is 176 MB).
models-all: $(STAMP)
	$(BIN)/compositor models fetch u2netp u2net modnet

serve: model
	$(BIN)/compositor serve

examples: model
	@mkdir -p $(EXAMPLES_OUT)
	@for body in fixtures/requests/example-*.json; do \
		name=$$(basename $$body .json); \
		echo "$$name -> $(EXAMPLES_OUT)/$$name.png"; \
		$(BIN)/compositor render $$body -o $(EXAMPLES_OUT)/$$name.png --source-map fixtures/source-map.json --timings || exit $$?; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The preview page's end-to-end tests drive Debian's Chromium, and the PNG writer's tests decode its files in
# Chromium and check them with libpng's pngcheck; without them those tests skip, saying so.
browser:
	@command -v chromium >/dev/null && command -v pngcheck >/dev/null \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium pngcheck) \
		|| echo "could not install chromium and pngcheck: the page's and the PNG decoders' tests will be skipped" >&2

# pytest exits 5 when it collected no test; that is a failure here, not a pass. The suite runs on a
# pytest-xdist worker per logical core, a file's tests on one worker (a module's servers start once): most
# tests wait on processes, servers and sockets, so even two workers on two cores shorten the run well.
test: models-all lint browser
	$(BIN)/python -m pytest -n logical --dist loadfile; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# The documentation site on http://127.0.0.1:8000, rebuilt as its sources change (make test builds it with
# warnings as errors, in tests/test_docs_site.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# The peers: Debian's ImageMagick 6 and GNU time (per-process peak RSS), pyvips and matplotlib from PyPI.
bench-setup: $(STAMP)
	@command -v convert-im6.q16 >/dev/null && test -x /usr/bin/time || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick time)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'

# Speed against the peers, the outbox against a dead receiver's backlog, then a 5-minute soak of the mirror with faults (about 27 minutes on 2 cores): ratio tables on stdout,
# benchmarks/results/*.json, plots in docs/.
bench: models-all bench-setup
	$(BIN)/python benchmarks/bench_removebg.py --json benchmarks/results/removebg.json --picture docs/removebg-models.png
	$(BIN)/python benchmarks/bench_startup.py --json benchmarks/results/startup.json
	$(BIN)/python benchmarks/bench_render.py --json benchmarks/results/render.json
	$(BIN)/python benchmarks/bench_png.py --json benchmarks/results/png.json
	$(BIN)/python benchmarks/bench_batch.py --json benchmarks/results/batch.json
	$(BIN)/python benchmarks/bench_server.py --json benchmarks/results/server.json
	$(BIN)/python benchmarks/bench_outbox.py --json benchmarks/results/outbox.json
	$(BIN)/python benchmarks/bench_soak.py --json benchmarks/results/soak.json
