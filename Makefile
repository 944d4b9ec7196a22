# mono-llm monorepo. `make serve` and `make test` are the two set-up commands (README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU machines take the local CPU build; an open `torch` requirement pulls a multi-GB CUDA build.
# GPU machines keep the torch they have: `make venv TORCH=`.
TORCH ?= torch==2.13.0
PACKAGES := kernels core multimodal audio openai-api
PYPROJECTS := pyproject.toml $(foreach p,$(PACKAGES),packages/$(p)/pyproject.toml)
# Triton kernels run on CPU tensors through Triton's interpreter when no GPU is present.
TRITON_INTERPRET ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)
export TRITON_INTERPRET
PYTEST_ARGS ?=

.PHONY: venv deps serve test test-slow soak lint format build dist-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: $(PYPROJECTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH),$(PIP) install -q '$(TORCH)')
	$(PIP) install -q $(foreach p,$(PACKAGES),-e 'packages/$(p)[dev]') -e '.[dev]'
	touch $@

# System packages the tests use: espeak-ng speaks the audio test clips (those tests skip
# without it). Installs with apt-get when run as root (CI); elsewhere says what to install.
deps:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && apt-get install -y -q espeak-ng; \
	  else echo "espeak-ng is missing: sudo apt-get install espeak-ng (audio tests skip without it)"; fi; }

# The OpenAI-compatible server on :8000; with no MODEL it serves the embedded tiny demo model
# (random weights: the API works end to end, the text is gibberish). `make serve ARGS=...`
# passes flags, e.g. ARGS="/path/to/model --api-key token-abc123".
serve: venv
	$(VENV)/bin/mono-llm serve --port 8000 $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite minus tests marked slow: lint, layering, every package's tests, end-to-end tests.
# Tests use tiny models: one torch thread is never slower there, and steady on a loaded machine
# (two threads spin-waiting on shared cores swung CPU test times by up to 8x).
TEST_THREADS ?= 1
test: lint
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: venv
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

# Not part of `make test`: a real server on 127.0.0.1 under twice its scheduler's capacity for
# SOAK_MINUTES with mixed traffic, then checks that every request ended cleanly and that the KV
# cache and RSS came back (docs/reliability.md). `make soak SOAK_MINUTES=10`.
SOAK_MINUTES ?= 2
soak: venv
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) scripts/soak.py --minutes $(SOAK_MINUTES)

# One wheel and one sdist per distribution into dist/.
build: venv
	rm -rf dist
	$(foreach p,$(PACKAGES),$(PY) -m build -q --outdir dist packages/$(p) &&) $(PY) -m build -q --outdir dist .

# Install the umbrella with every extra into a fresh venv from dist/ and smoke-test it.
dist-check: build
	rm -rf .dist-venv
	$(PYTHON) -m venv .dist-venv
	.dist-venv/bin/pip install -q --upgrade pip
	$(if $(TORCH),.dist-venv/bin/pip install -q '$(TORCH)')
	.dist-venv/bin/pip install -q --find-links dist 'mono-llm[all]'
	$(PY) scripts/check_wheels.py dist
	cd /tmp && $(CURDIR)/.dist-venv/bin/python -c 'import mono_llm.kernels, mono_llm.core, mono_llm.openai_api, mono_llm.audio, mono_llm.multimodal; print("imports ok")'
	cd /tmp && $(CURDIR)/.dist-venv/bin/mono-llm --version

clean:
	rm -rf dist .dist-venv .pytest_cache .ruff_cache
