# zooscape: `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv demo test lint bench clean

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

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/population.py

clean:
	rm -rf $(VENV) demo_zoo .pytest_cache
