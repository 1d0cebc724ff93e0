# The two commands a newcomer needs: `make run` (main job) and `make test`.
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data/Flipkart
INDEX_DIR ?= var/index
PORT ?= 8000
TEST_WORKERS ?= auto
TEST_THREADS ?= 1
export DATA_DIR INDEX_DIR PORT

.PHONY: run test lint docs install system-packages index port-free bench report clean mutate

# uv installs the same pinned files as `pip install -r` would (the same versions, checked by hand
# with `pip freeze`): a fresh `make install` took 111 s against pip's 216 s on this 2-core machine,
# as it downloads and unpacks in parallel (torch alone brings 3.2 GB of CUDA libraries).
# --compile-bytecode, as pip does: this machine sets PYTHONDONTWRITEBYTECODE=1, so without it every
# process (the tests start many) compiled torch & co. again (import 30 s against 14 s; .ci/run 1,390 s).
UV_VERSION := 0.13.10

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed system-packages

# The service's I/O front (service/front.py, docs/slow-clients.md) is HAProxy, a Debian package:
# installed here when we are root, otherwise the line to run is printed. FRONT=none skips it.
system-packages:
	@if [ "$${FRONT:-haproxy}" != none ] && ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; \
	  else \
	    echo "make install: haproxy is missing: run 'sudo apt-get install haproxy' (or set FRONT=none)" >&2; exit 1; \
	  fi; \
	fi

$(INDEX_DIR)/CURRENT: | install
	$(PY) -m indexer build --data "$(DATA_DIR)" --out "$(INDEX_DIR)"

index: $(INDEX_DIR)/CURRENT

# A port in use is said in one line before the index is built (minutes on a fresh machine).
port-free: install
	$(PY) -m service.serving "$(PORT)"

run: port-free index
	$(PY) -m indexer info "$(INDEX_DIR)"
	PATH="$(abspath $(VENV))/bin:$$PATH" && eval exec "$$(sed -n 's/^web: *//p' Procfile)"

# One pytest-xdist worker per core (TEST_WORKERS=0: one process); tests sharing a fixture stay on one
# worker (tests/xdist_groups.py). One OpenMP / BLAS thread per worker (TEST_THREADS): with the
# libraries' default of one per core, the two workers' threads fought over the 2 cores (suite
# 991 s, against 864 s with one thread each, docs/development.md).
test: install
	OMP_NUM_THREADS=$(TEST_THREADS) OPENBLAS_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
	  $(PY) -m pytest -n $(TEST_WORKERS)

# Lint, format check and type check: what .ci/run runs before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link, anchor or a page
# left out of nav (not --quiet: it hides the warnings that --strict counts).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: index
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Mutation testing of the Categorizer and its fitting protocol (mutmut, config in pyproject.toml).
# Slow (tens of minutes on 2 cores); not run by CI. Prints the score; `mutmut browse` shows survivors.
mutate: install
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 || true
	$(VENV)/bin/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	$(VENV)/bin/mutmut results

clean:
	rm -rf var reports .pytest_cache mutants site
