# gamed — the two commands that matter are `make run` and `make test`.
# Both bootstrap .venv from nothing (Python 3.11+, no other prerequisites).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 7000
# The stamp is rebuilt when the packaging changes, so `make test` after a pull
# installs new dependencies without a manual step.
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit integration bench clean distclean release-test

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat mode puts the project root on sys.path, so twistd sees
	# twisted/plugins/gamed_plugin.py (PEP 660 strict mode does not, with a flat layout).
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test,bench]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n gamed --port $(PORT)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# mypy and import-linter read their settings (files, plugins, contracts) from setup.cfg.
lint: $(STAMP)
	$(BIN)/ruff check gamed tests twisted bench
	$(BIN)/ruff format --check gamed tests twisted bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

bench: $(STAMP)
	$(BIN)/python -m gamed.bench.suite

# Build a wheel, install it in a throwaway venv and ask twistd for the plugin:
# catches packaging mistakes an editable install hides.
release-test:
	rm -rf build/release-venv dist
	$(PYTHON) -m venv build/release-venv
	build/release-venv/bin/python -m pip install --quiet --upgrade pip build
	build/release-venv/bin/python -m build --wheel --outdir dist .
	build/release-venv/bin/python -m pip install --quiet dist/*.whl
	cd / && $(CURDIR)/build/release-venv/bin/twistd --help | grep gamed > /dev/null && echo "release-test: twistd lists gamed"

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .hypothesis _trial_temp*
	find . -name __pycache__ -prune -exec rm -rf {} + -o -name dropin.cache -exec rm -f {} +

distclean: clean
	rm -rf $(VENV) gamed-data
