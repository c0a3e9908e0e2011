# msir — the two commands of the quick start are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of this exact version is found locally on the project's machines. A torch already
# importable in the venv (for example a user's CUDA build) is never replaced.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.msir-installed
export MSIR_TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install test test-deploy lint format demo demo-isic browser clean-demo help

help:
	@echo "make demo   - build the demo collection and serve the web UI on http://127.0.0.1:8000"
	@echo "make demo DATA=<folder> [TRAIN=0|1] - your own labelled photos: train a model for their classes if needed, evaluate, index, serve"
	@echo "make demo-isic - the dermatology demo: ISIC 2018 training images + the shipped MS-ViT (needs ../shared/datasets)"
	@echo "make test   - lint + the whole test suite (CPU)"
	@echo "make test-deploy - build the Docker images and run the docker-compose deployment (Docker; root installs it)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run the install whenever pyproject.toml changes; quick no-op otherwise.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already in $(VENV): $$($(PY) -c 'import torch; print(torch.__version__)') (kept)"; \
	else \
	  $(PIP) install -q "$(TORCH_SPEC)"; \
	fi
	$(PIP) install -q -e ".[dev]"
	@touch $@

install: $(STAMP)

# Debian's chromium for the browser test; installed only when we are root and it is missing.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will skip (or fail when CI=true)"; \
	  else \
	    echo "chromium missing and not root: the browser test will skip (install Debian's chromium to enable it)"; \
	  fi; \
	fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The deploy test (marker docker) needs a Docker engine and builds images: `make test-deploy` runs it.
# Two xdist workers (the 2-core CI machine); --durations lists the slowest tests, to keep the suite fast.
test: install browser lint
	$(VENV)/bin/pytest -q -m "not docker" -n 2 --dist loadgroup --durations=20

test-deploy: install
	docker/offline/test-deploy.sh

# DATA=<folder>: index it; a labelled folder whose classes the shipped model does not know gets its own model first
# (trained, evaluated on a held-out part, reused by later runs). TRAIN=0 never trains, TRAIN=1 always does.
demo: install
	$(PY) -m app.quickstart $(if $(DATA),--data "$(DATA)",) $(if $(TRAIN),--train "$(TRAIN)",)

# The medical demo: the ISIC 2018 training images (the shared tar, extracted once to ~/.cache/msir/datasets, or
# DATA=<a folder of ISIC images with their ground-truth CSV>) indexed with the shipped multi-scale ViT.
ISIC_DATA ?= ../shared/datasets/isic2018_task3_64px.tar
demo-isic: install
	$(PY) -m app.quickstart --data "$(or $(DATA),$(ISIC_DATA))" --split train \
	  --checkpoint demo/isic2018/msvit_isic2018.safetensors $(if $(PORT),--port $(PORT),)

clean-demo:
	rm -rf var/demo
