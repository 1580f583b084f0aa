# The README's two commands: `make demo` (replay ten days, show the alerts) and `make test`.
# Both create .venv and install the project on first use; nothing else is done by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test lint unit integration demo images engine engine-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "cyberstream needs Python 3.11+, found " + sys.version' 
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collected no tests: make treats that as the failure it is.
test: lint
	$(BIN)/pytest

unit: install
	$(BIN)/pytest -m "not integration"

integration: install
	$(BIN)/pytest -m integration

demo: install
	$(BIN)/cyberstream demo $(DEMO_ARGS)

# The app and Kafka images, from upstream bases or, with no registry, offline (README: Docker).
# EXTRA_CA=/path/ca.pem: a CA the app image's build trusts (TLS-intercepting proxy).
images: install
	$(BIN)/python -m cyberstream.images $(if $(EXTRA_CA),--extra-ca $(EXTRA_CA)) $(IMAGES_ARGS)

# A Docker engine on $$DOCKER_HOST (installed and started if missing, as root), then `make images`.
# Only CI (.ci/run) or a user who asks runs it; `make engine-stop` stops an engine it started.
engine:
	scripts/engine.sh start

engine-stop:
	scripts/engine.sh stop


clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
