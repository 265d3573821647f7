# One entry point for installing, testing and running the demo.
# CPU torch is installed BEFORE the project: otherwise pip resolves `torch` to a
# multi-GB CUDA build. Users with GPUs install their own torch first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint demo demo-data browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -qq -e ".[dev,demo]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict ray_pipeline tests benchmarks

# The demo reviews (Debian r-cran-modeldata via apt-get) into the data cache; idempotent.
demo-data: install
	$(BIN)/ray-pipeline data fetch-demo

# Headless Chromium and its driver (Debian's packages), for the report's browser test; installed
# with apt-get only when missing (the package lists fetched first when apt has none).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq chromium chromium-driver \
			|| { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; \
	fi

# Tests that need the demo data, the demo model or the browser fail (instead of skipping) when
# it is missing. The tests run in TEST_WORKERS pytest-xdist processes, a module per process at a
# time (its Ray cluster fixture is the module's). On 2 cores 2 workers kept both cores busy
# (1.86 of 2, one process: 1.28; 3 workers were slower: 98% busy, 724 s for a third of the
# tests). --no-loadscope-reorder keeps the order tests/conftest.py gives the modules (the
# longest first, the two-node and chaos tests at the head); xdist's own order (most tests
# first) left the one-test demo module last. The tests that start `ray start` nodes, a 2-worker
# DDP group or the chaos run used to run after the others one by one: that left 30% of the
# cores idle (441 s for those 9; two at a time: 348 s, 95% busy). mypy run beside those tests
# made them slower than it saved (534 s against 461 s).
TEST_WORKERS ?= 2
test: lint demo-data browser
	RAY_PIPELINE_REQUIRE_DEMO=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The whole pipeline on the embedded demo (6-12 min on 2 CPU cores), then the report.
demo: install demo-data
	$(BIN)/ray-pipeline run --config config/experiment/demo.yaml
	$(BIN)/ray-pipeline report --config config/experiment/demo.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
