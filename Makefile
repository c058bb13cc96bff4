# The two commands that matter: `make demo` and `make test`. Both set up .venv themselves.
# `make test` is what CI runs: lint, format check, types, then the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast check lint types bench clean browser java
SOURCES := collector analysis tests bench sample_data
NODE_CLIENT := tests/node_client
# npm ci's own record inside node_modules: an emptied directory is not taken as installed
NODE_MODULES := $(NODE_CLIENT)/node_modules/.package-lock.json

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): flagscope and its pinned dependencies (a minute or two, once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	# GrowthBook's gbstats, an oracle in tests/test_quantile_clustered_oracle.py: its
	# metadata pins numpy<2 and pandas<2 (no wheels for newer Pythons), but the statistics
	# module it is used for needs neither
	$(BIN)/python -m pip install --quiet --no-deps gbstats==0.8.0
	touch $(STAMP)

# `make demo GUARD=rollback`: the guard rolls the shop's flag back for real (flagd provider).
# `make demo UI=1`: then serve the web view of the demo's lake (http://127.0.0.1:4320/).
demo: $(STAMP)
	$(BIN)/python sample_data/demo.py$(if $(GUARD), --guard $(GUARD))$(if $(UI), --ui)

# Three workers, a test file each at a time; then the timed and memory-bound tests alone.
test: check browser java $(NODE_MODULES)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# The edit-run loop (well under a minute): no collector on a socket, no subprocess, crash
# cycle or simulation, on two workers; `make test` stays what CI runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not simulation and not socket" -n 2

check: lint types

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

# mypy reads the package as it is installed (flagscope.collector, flagscope.analysis): a
# tree of links to the folders under .typecheck/ gives it that layout.
types: $(STAMP)
	@mkdir -p .typecheck/flagscope
	@ln -sfn ../../analysis/_root/__init__.py .typecheck/flagscope/__init__.py
	@ln -sfn ../../analysis/_root/__main__.py .typecheck/flagscope/__main__.py
	@ln -sfn ../../collector .typecheck/flagscope/collector
	@ln -sfn ../../analysis .typecheck/flagscope/analysis
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p flagscope

# tests/test_engines.py reads the lake with Spark 4 (pyspark, local mode), and
# tests/test_spark_engine.py runs the diff's cohort stage in it (`--engine spark`); both need
# a Java 17 or 21 runtime: Debian's default-jre-headless (17 on bookworm) when there is none.
java:
	@command -v java >/dev/null 2>&1 || [ -x "$${JAVA_HOME:-/nonexistent}/bin/java" ] || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's default-jre-headless for the Spark test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null; \
	else \
		echo "note: no Java runtime found; the Spark test needs one (apt-get install default-jre-headless)"; \
	fi

# The HTML report is checked in headless Chromium (Debian's package) when it is there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the HTML report test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "note: no Chromium found; the HTML report test needs it (apt-get install chromium)"; \
	fi

# The Node.js OpenTelemetry SDK and OpenFeature JS that tests/test_node_clients.py runs as a
# client, at the versions package-lock.json pins, when npm is there (the tests skip if not).
$(NODE_MODULES): $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "note: no npm found; the Node.js client tests need Node.js >= 20.6 and npm"; \
	elif (cd $(NODE_CLIENT) && npm ci --loglevel=error); then \
		touch $@; \
	else \
		rm -rf $(NODE_CLIENT)/node_modules; \
		echo "note: npm ci failed in $(NODE_CLIENT); the Node.js client tests will skip"; \
	fi

# Ingest (~1 min), then the analysis at 1 M, 10 M and 100 M events (the 100 M lake takes
# ~5 min and ~12 GB to generate once; it is cached in bench/out/lakes), a day's diff against
# the lake's age (1 and 30 days), then the UI's pages over the 10 M lake; a live lake's
# file count and reader latency with compaction on and off (~11 min).
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/lake_write.py
	$(BIN)/python bench/live_files.py
	$(BIN)/python bench/analysis.py
	$(BIN)/python bench/lake_age.py
	$(BIN)/python bench/ui.py
	$(BIN)/python bench/guard_watch.py


clean:
	rm -rf $(VENV) flagscope-data .pytest_cache .typecheck .mypy_cache .ruff_cache build dist *.egg-info \
		$(NODE_CLIENT)/node_modules
