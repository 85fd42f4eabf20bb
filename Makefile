# Switchboard: the two commands are `make run` and `make test`; both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test js-test lint bench bench-capacity browser clean help

help:
	@echo "make run     start the gateway (WebSocket :9004, HTTP API :9005)"
	@echo "make test    run the whole test suite (installs test dependencies)"
	@echo "make js-test the JS client's type check and node tests only"
	@echo "make lint    ruff check"
	@echo "make bench   run the benchmarks (see docs/BENCHMARKS.md)"
	@echo "make bench-capacity  Redis and node cost per session/broadcast (docs/CAPACITY.md)"
	@echo "make browser install Debian's chromium for the browser tests"

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per dependency set; either is rebuilt when setup.cfg changes.
$(VENV)/.deps-run: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -e .
	@touch $@

$(VENV)/.deps-test: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.deps-run

$(VENV)/.deps-bench: setup.cfg pyproject.toml | $(PY)
	$(PIP) install -e '.[test,bench]'
	@touch $@ $(VENV)/.deps-run $(VENV)/.deps-test

# The JS client's dev tools (typescript; @asyncapi/specs, the schema /asyncapi.json is checked
# against), pinned by its lockfile; reinstalled when it changes.
JS         := clients/js
JS_DEPS    := $(JS)/node_modules/.installed

$(JS_DEPS): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(VENV)/.deps-run
	exec $(PY) run_websocket_server.py

test: $(VENV)/.deps-test $(JS_DEPS)
	$(PY) -m ruff check .
	$(MAKE) --no-print-directory js-test
	$(PY) -m pytest $(PYTEST_ARGS)

# Node 20's WHATWG WebSocket is behind --experimental-websocket (on by default from Node 22):
# the tests then drive the same WebSocket API a browser gives the client.
js-test: $(VENV)/.deps-test $(JS_DEPS)
	cd $(JS) && ./node_modules/.bin/tsc --noEmit -p . && \
	  SWITCHBOARD_PYTHON=$(abspath $(PY)) node --experimental-websocket --test --test-timeout=90000 --test-reporter=spec test/*.test.js

lint: $(VENV)/.deps-test
	$(PY) -m ruff check .

bench: $(VENV)/.deps-bench
	$(PY) -m bench.run $(BENCH_ARGS)

# One real redis-server and 1, 2 and 4 gateway processes on loopback (~10 min; smaller:
# BENCH_ARGS="--quick" or e.g. "--kept 5000 --connected 500 --nodes 1,2").
bench-capacity: $(VENV)/.deps-bench
	$(PY) -m bench.capacity $(BENCH_ARGS)

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }
	@chromium --version

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis $(JS)/node_modules
