# usagi-p2p — the two commands of the README, and the rest.
# Assumes only python3 (3.11+) and make on the machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHARED := ../shared

.PHONY: messages demo test test-pure sanitize ci bench lint vectors clean faults fuzz overload ipfs-daemon ipfs-daemon-stop

$(STAMP): pyproject.toml setup.py kernel/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

# The browser tests (tests/ui, docs/ui.md) drive Debian's Chromium: on a Debian
# machine where we are root and it is missing, install it and Japanese fonts once.
# Elsewhere the tests say what is missing (skipped; failed under CI=1).
BROWSER := $(VENV)/.browser
$(BROWSER): $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ -z "$$USAGI_CHROMIUM" ] && [ "$$(id -u)" = 0 ] \
	    && [ -f /etc/debian_version ]; then \
	  echo "installing chromium and fonts-noto-cjk for the browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium fonts-noto-cjk >/dev/null) || { echo "apt-get failed: browser tests will skip" >&2; exit 0; }; \
	fi; if [ -x /usr/bin/chromium ] || [ -n "$$USAGI_CHROMIUM" ]; then touch $(BROWSER); fi

# A PNG of every page of the web UI in Japanese and English (tools/screenshots.py),
# into docs/screenshots/; needs the browser of the tests (and fonts-noto-cjk).
.PHONY: screenshots
screenshots: $(STAMP) $(BROWSER)
	$(PY) tools/screenshots.py

# The web UI's messages: extract them and merge them into each catalog (docs/ui.md).
UI := usagi_p2p/company/ui
messages: $(STAMP)
	$(VENV)/bin/pybabel --quiet extract -F $(UI)/babel.cfg -k N_ --no-location --sort-output \
	  --project usagi-p2p -o $(UI)/locale/messages.pot $(UI)
	$(VENV)/bin/pybabel --quiet update -i $(UI)/locale/messages.pot \
	  -d $(UI)/locale -D messages
	rm $(UI)/locale/messages.pot

demo: $(STAMP)
	$(VENV)/bin/usagi demo

# Two pytest-xdist workers (the tests use their own ports and directories):
# about half the wall time of one on a 2-core runner. PYTEST_ARGS adds to them.
TEST_ARGS ?= -n 2
test: $(STAMP) $(BROWSER)
	@if [ -f $(SHARED)/tools/check_layers.py ]; then $(PYTHON) $(SHARED)/tools/check_layers.py . ; \
	 elif [ -n "$$CI" ]; then echo "CI: $(SHARED)/tools/check_layers.py is missing" >&2; exit 1; fi
	$(PY) -m pytest -q -p no:cacheprovider $(TEST_ARGS) $(PYTEST_ARGS)

# The whole suite once more on the pure-Python codec and rules (kernel/dagcbor.py,
# USAGI_PURE_PYTHON=1), as an install without a C compiler runs; CI runs it.
# Two pytest-xdist workers by default (the tests use their own ports and
# directories): about half the time of one on a 2-core runner. The browser
# tests (tests/ui) are left out: the pages add no codec path the rest of the
# suite does not cover, and they are the slowest tests there are.
PURE_ARGS ?= -n 2 --ignore=tests/ui
test-pure: $(STAMP)
	USAGI_PURE_PYTHON=1 $(PY) -c 'import kernel.dagcbor as d; assert d.IMPLEMENTATION == "python", d.IMPLEMENTATION'
	USAGI_PURE_PYTHON=1 $(PY) -m pytest -q -p no:cacheprovider $(PURE_ARGS)

# The C codec built with ASan + UBSan in a temporary copy of the tree, running
# tests/kernel, tests/fuzz and bench/fuzz.py's DAG-CBOR targets (tools/sanitize.sh).
sanitize: $(STAMP)
	PYTHON=$(abspath $(PY)) tools/sanitize.sh

# What .ci/run runs: the suite, the sanitizer run, the pure-Python suite.
ci: test sanitize test-pure

# Scale (docs/scale.md): mesh.py runs N = 10 and 100 companies (~3 min) and
# growth.py a node at 10k and 100k documents (~2 min). The long runs are opt-in:
#   make bench MESH_ARGS='--n 10 1000'   (trades over 350 s at both N: ~16 min)
#   make bench GROWTH_ARGS=--million   (16 min in all on a quiet host, 2026-12-07)
# MESH_ARGS='--plots docs/scale' redraws the pictures (needs matplotlib: '.[bench]').
MESH_ARGS ?=
GROWTH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/kernel.py
	@for b in store archive exchange search api ui; do \
	  if [ -f bench/$$b.py ]; then $(PY) bench/$$b.py || exit 1; fi; done
	$(PY) bench/mesh.py $(MESH_ARGS)
	$(PY) bench/growth.py $(GROWTH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check kernel ipfs plugins usagi_p2p tests bench tools setup.py
	$(VENV)/bin/mypy

# The proving ground (docs/reliability.md). Short versions run in 'make test'.
faults: $(STAMP)
	$(PY) bench/faults.py $(FAULTS_ARGS)
	$(PY) bench/flood.py $(FLOOD_ARGS)

fuzz: $(STAMP)
	$(PY) bench/fuzz.py $(FUZZ_ARGS)

overload: $(STAMP)
	$(PY) bench/overload.py

vectors: $(STAMP)
	$(PY) tools/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache

# A real IPFS daemon (Kubo if on PATH, else js-ipfs) offline on 127.0.0.1.
# The tests start their own; this is for trying a node on the Kubo store by hand.
ipfs-daemon:
	$(PYTHON) tools/ipfs-daemon/daemon.py install
	$(PYTHON) tools/ipfs-daemon/daemon.py start

ipfs-daemon-stop:
	$(PYTHON) tools/ipfs-daemon/daemon.py stop
