# The README's two commands: `make run` and `make test`. Every step is idempotent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.normlab-installed

export MPLBACKEND := Agg

KERNELS := src/normlab/kernels/cpu/_kernels.so

.PHONY: run test install kernels data docs release-check lint clean

run: install kernels data
	$(VENV)/bin/normlab tutorial

# The numerical tests run twice: on this CPU's best kernels, then on ATen's portable ones,
# so that a reduction order chosen by another CPU (AVX2, AVX-512) cannot surprise us.
NUMERICAL_TESTS := tests/functional tests/nn tests/kernels

test: install kernels data browser
	$(VENV)/bin/ruff check src tests
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(NUMERICAL_TESTS)
	$(MAKE) --no-print-directory docs

# torch is pinned (constraints.txt) and installed first so that pip takes the CPU build from
# local disk; the package itself accepts any torch it supports (pyproject.toml).
install: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# normlab's fused CPU kernels (C++, linked against the installed torch): about 25 s once.
kernels: $(KERNELS)
$(KERNELS): $(STAMP) $(wildcard src/normlab/kernels/cpu/*.cpp src/normlab/kernels/cpu/*.h)
	$(PY) -m normlab.kernels.cpu --force

data: install
	bash tools/provision-data.sh

# headless Chromium and its driver for the browser tests (Debian's packages)
browser:
	bash tools/provision-browser.sh

# Small reports of every kind (and the docs site when built), opened in headless Chromium at
# 1280 and 800 px: prints what overflows, by section. Screenshots in build/browser-check/.
browser-check: install kernels data browser
	rm -rf build/browser-check
	$(VENV)/bin/normlab tutorial --train-subset 512 --test-subset 256 --epochs 1 --no-progress \
	  --out build/browser-check/runs
	$(VENV)/bin/normlab study --quick --seeds 1 --workers 2 --no-progress \
	  --out build/browser-check/runs
	$(PY) -m normlab.testing.browser --print build/browser-check/runs/*/report.html \
	  $(wildcard site) --screenshots build/browser-check/screenshots

# The documentation site (docs/, mkdocs.yml) into site/; a warning fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# The package as a user gets it: an sdist and a wheel that twine accepts; the wheel installed
# into a fresh virtual environment (torch from this machine's disk, as in make install) where
# `normlab check` passes on its CPU kernels, built on first use into a cache of its own (a
# failed build fails the check; the tensor code is the test suite's).
RELEASE := build/release
RELEASE_PIP := $(RELEASE)/venv/bin/pip install -q --no-compile --disable-pip-version-check \
  -c constraints.txt
release-check: install
	rm -rf $(RELEASE)
	$(PY) -m build --quiet --outdir $(RELEASE)/dist .
	$(VENV)/bin/twine check --strict $(RELEASE)/dist/*
	$(PY) -m venv $(RELEASE)/venv
	$(RELEASE_PIP) torch
	$(RELEASE_PIP) $(RELEASE)/dist/*.whl
	cd $(RELEASE) && NORMLAB_KERNEL_CACHE=$(CURDIR)/$(RELEASE)/kernel-cache \
	  venv/bin/normlab check --code kernels

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache $(KERNELS)
