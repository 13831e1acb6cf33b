# kryten-pipeline — `make run` refreshes the default namespace from a fresh clone; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests start for real (PostgreSQL for the mediacms-db source, Redis for the event sensor).
SYSTEM_PACKAGES := postgresql redis-server openssl

.PHONY: setup run status ui screenshots test test-fast lint system-deps protos sample bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# One refresh on the embedded defaults (shipped sample + embedded nats-server), then its status.
run: setup
	$(BIN)/kryten-pipeline refresh
	$(BIN)/kryten-pipeline status

status: setup
	$(BIN)/kryten-pipeline status

# The Dagster UI on http://127.0.0.1:3000 (DAGSTER_HOME = this directory).
ui: setup
	DAGSTER_HOME=$(CURDIR) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The README's UI pictures (docs/ui/*.png), from a demo instance, in Debian's headless Chromium.
screenshots: setup
	command -v chromium >/dev/null || apt-get install -y -q chromium
	$(BIN)/python scripts/ui_screenshots.py --out docs/ui

test: setup system-deps
	$(BIN)/ruff check kryten_pipeline kryten_pipeline_tests bench scripts
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check kryten_pipeline kryten_pipeline_tests bench scripts

# Installs the Debian packages the tests need when they are missing (needs root, as in CI).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "not root: cannot install$$missing; the tests that need them will be skipped"; \
	  fi; \
	fi

protos: setup
	bash scripts/gen_protos.sh

sample: setup
	$(BIN)/python scripts/make_sample_catalog.py

bench: setup
	$(BIN)/python bench/refresh_export.py

clean:
	rm -rf data .dagster
