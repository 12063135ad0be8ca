# gamed — the two commands that matter are `make run` and `make test`.
# Both bootstrap .venv from nothing (Python 3.11+); `make test` also installs the
# Debian packages the suite needs (.ci/debian-packages.txt, via .ci/install-deps.sh).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 7000
# `make bench BENCH_ARGS=--quick`; results land in the working directory (gitignored).
BENCH_OUT  ?= bench-results.json
BENCH_ARGS ?=
# The stamp is rebuilt when the packaging changes, so `make test` after a pull
# installs new dependencies without a manual step.
STAMP  := $(VENV)/.installed

.PHONY: run test deps lint unit integration bench clean distclean release-test

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# setup.cfg's `package_dir = =.` makes setuptools' default editable mode a
	# plain .pth with the project root, so twistd finds twisted/plugins/gamed_plugin.py
	# from any directory (its import-hook mode would not; compat mode is deprecated).
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n gamed --port $(PORT)

test: $(STAMP) deps lint
	$(BIN)/python -m pytest -q

# System packages (Prometheus): installed when missing, with sudo when not root.
deps:
	bash .ci/install-deps.sh

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) deps
	$(BIN)/python -m pytest -q tests/integration

# mypy and import-linter read their settings (files, plugins, contracts) from setup.cfg.
lint: $(STAMP)
	$(BIN)/ruff check gamed tests twisted
	$(BIN)/ruff format --check gamed tests twisted
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

bench: $(STAMP)
	$(BIN)/python -m gamed.bench.suite --out $(BENCH_OUT) $(BENCH_ARGS)
	$(BIN)/python -m gamed.bench.cluster --out bench-cluster.json $(filter --quick,$(BENCH_ARGS))

# Build a wheel, install it in a throwaway venv and ask twistd for the plugin, then
# run the bench suite (floor server started by module) outside the checkout:
# catches packaging mistakes an editable install hides.
release-test:
	rm -rf build/release-venv dist
	$(PYTHON) -m venv build/release-venv
	build/release-venv/bin/python -m pip install --quiet --upgrade pip build
	build/release-venv/bin/python -m build --wheel --outdir dist .
	build/release-venv/bin/python -m pip install --quiet dist/*.whl
	cd / && $(CURDIR)/build/release-venv/bin/twistd --help | grep gamed > /dev/null && echo "release-test: twistd lists gamed"
	cd / && $(CURDIR)/build/release-venv/bin/python -m gamed.bench.suite --help > /dev/null && echo "release-test: gamed.bench.suite --help"
	cd / && $(CURDIR)/build/release-venv/bin/python -m gamed.bench.suite --quick \
		--targets floor-orjson --scenarios churn --out $(CURDIR)/build/release-bench.json \
		> $(CURDIR)/build/release-bench.log 2>&1 \
		|| { cat $(CURDIR)/build/release-bench.log; exit 1; }
	@echo "release-test: the suite ran the floor (python -m gamed.bench.floor) from the wheel"

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .hypothesis _trial_temp*
	find . -name __pycache__ -prune -exec rm -rf {} + -o -name dropin.cache -exec rm -f {} +

distclean: clean
	rm -rf $(VENV) gamed-data
