# The two commands that matter: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python sample_data/demo.py

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The HTML report is checked in headless Chromium (Debian's package) when it is there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the HTML report test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "note: no Chromium found; the HTML report test needs it (apt-get install chromium)"; \
	fi

# Ingest (~1 min), then the analysis at 1 M, 10 M and 100 M events (the 100 M lake takes
# ~5 min and ~12 GB to generate once; it is cached in bench/out/lakes).
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/analysis.py

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check collector analysis tests bench sample_data

clean:
	rm -rf $(VENV) flagscope-data .pytest_cache
