# carcrawl: `make demo` runs the whole pipeline offline on the sandbox web; `make test` runs the tests.
# Both create the virtual environment and install everything first (once; re-run is a no-op).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is installed with pip from the versions pinned here (the offline model needs no download)
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint bench browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,bench,offline-model]'
	-$(BIN)/pip install -q 'nvidia-dali-cuda130' || echo "DALI not installed: the Pillow decoder will be used"
	-sh scripts/install-pillow-simd.sh $(BIN) || echo "Pillow-SIMD not built: plain Pillow is used"
	touch $(STAMP)

# Debian's Chromium + ChromeDriver for the report's browser test (skipped with a reason if absent)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	    echo "chromium not installed: the browser test will be skipped"; }

demo: install
	$(BIN)/carcrawl demo --out demo-out

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check carcrawl tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out out .pytest_cache
