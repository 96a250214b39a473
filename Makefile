# zooscape: `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv demo test lint bench clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev,ray]"
	@# the native kernels, now rather than on first use (cheap; never fails the install)
	-@$(PY) -m zooscape.cli doctor --build-kernels >/dev/null 2>&1 || echo "note: native kernels not built now (\`zooscape doctor\` says why; the PyTorch path works)"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py --out demo_zoo
	$(VENV)/bin/zooscape zoo verify demo_zoo

test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# the report's browser test (tests/report) drives Debian's chromium with Playwright (installed by the dev extra)
browser:
	@if [ ! -x /usr/bin/chromium ] && [ -z "$$ZOOSCAPE_CHROMIUM" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "note: tests/report needs chromium: sudo apt-get install -y chromium"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/population.py

clean:
	rm -rf $(VENV) demo_zoo .pytest_cache
