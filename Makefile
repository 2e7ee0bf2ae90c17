# csm-service: make test | make lint | make proto | make bench | make run
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build on these machines; a GPU image installs its own CUDA torch first.
TORCH_SPEC ?= torch==2.13.0
MOSHI_SPEC ?= moshi==0.2.13
STAMP := $(VENV)/.installed

# Debian's Chromium for the browser test (needs root and apt; without it that test is skipped with its reason).
CHROMIUM ?= /usr/bin/chromium

.PHONY: install browser test test-gpu gpu-report lint format proto bench loadtest fuzz run clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps "$(MOSHI_SPEC)"
	$(PIP) install -q -e ".[engine,test]"
	touch $(STAMP)

install: $(STAMP)

browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the playground browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -q -rs tests

test-gpu: $(STAMP)
	$(PY) -m pytest -q -rs -m gpu tests/gpu

lint: $(STAMP)
	$(VENV)/bin/ruff check csm_service tests scripts runpod
	$(VENV)/bin/ruff format --check csm_service tests scripts runpod
	$(VENV)/bin/buf lint protos
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix csm_service tests scripts runpod
	$(VENV)/bin/ruff format csm_service tests scripts runpod

bench: $(STAMP)
	$(PY) -m csm_service.cli bench $(or $(BENCH_ARGS),frame)
	$(PY) -m csm_service.cli bench engine
	$(PY) -m csm_service.cli bench twilio --spawn --json bench-results/twilio.json

# 3 rounds of 200 WebSocket sessions (2 streamed requests each) + 20 HTTP clients against a spawned
# tiny-random server on loopback; then SIGTERM, which must drain and exit 0. JSON in bench-results/.
loadtest: $(STAMP)
	$(PY) -m csm_service.cli loadtest --spawn --rounds 3 --json bench-results/loadtest.json $(LOADTEST_ARGS)

# The fuzz tests with random seeds and many more examples than the suite's fixed, short run.
fuzz: $(STAMP)
	CSM_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),1000) $(PY) -m pytest -q -rs -s tests/integration/test_fuzz.py

# On a CUDA machine with CUDA torch and no network: carried wheels (./wheels), the GPU tests, both
# benchmarks at full size, JSON in bench-results/gpu-report/ and the docs section (docs/benchmarks.md,
# "First GPU run"). No $(STAMP): that would install the CPU torch. GPU_REPORT_ARGS=--dry-run checks it here.
GPU_PYTHON ?= python3
gpu-report:
	PYTHON=$(GPU_PYTHON) scripts/gpu_report.sh $(GPU_REPORT_ARGS)

run: $(STAMP)
	$(VENV)/bin/csm-service serve --model tiny-random

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

proto: $(STAMP)
	$(PY) scripts/gen_proto.py
