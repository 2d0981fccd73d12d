# Quick start: `make demo` (the main job) and `make test` (the test suite).
# Both install everything into the current Python environment first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install install-test install-browser demo demo-realworld lint test test-fast

# basicsr 1.4.2 ships only an sdist whose build requirements name an unpinned torch:
# pip's isolated build would download the newest torch (GBs) just to build it. So torch and
# torchvision come first, then basicsr is built against them without build isolation.
install:
	$(PIP) install --quiet setuptools wheel torch torchvision
	$(PIP) install --quiet --no-build-isolation basicsr==1.4.2
	$(PIP) install --quiet --no-build-isolation -e .

install-test: install
	$(PIP) install --quiet --no-build-isolation -e '.[test]'

demo: install
	$(PYTHON) -m elan_arch.demo

# ELAN-light in BasicSR's Real-ESRNet pipeline on degraded photos (docs/realworld.md, "The demo").
demo-realworld: install
	$(PYTHON) -m elan_arch.demo --realworld

# Lint (ruff.toml: pyflakes and pycodestyle at 120 columns); part of `make test`, so CI runs it.
lint: install-test
	$(PYTHON) -m ruff check .

# Headless Chromium for the comparison page's browser test (tests/compare/test_compare_browser.py): Debian's
# package, installed when missing. Where apt cannot install it the test is skipped with that reason, except
# under CI=true, where it fails.
install-browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "install-browser: could not install Debian's chromium; the browser test is skipped (it fails under CI=true)"; \
	fi

# Everything CI runs: lint, then the whole test suite.
test: lint install-browser
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# A developer's loop of a minute or two: no subprocess training runs, kernel compiles or ONNX sweeps.
test-fast: install-test
	$(PYTHON) -m pytest -m 'not slow' $(PYTEST_ARGS)
