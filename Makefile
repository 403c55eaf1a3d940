# The two commands: `make demo` (the whole loop on the embedded default) and `make test`.
# Both do all set-up themselves on a fresh machine (venv, pip install, npm install).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench image clean

setup: $(STAMP) node_modules/.installed

$(STAMP): requirements.txt requirements-dev.txt inference_image/requirements.txt inference_image/requirements-cpu.txt \
		inference_image/requirements-ui.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/python -m devhost up $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/chat_overhead.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/durable_overhead.py

# The CPU target of inference_image/Dockerfile, built here with no registry (needs root for dockerd/debootstrap).
image: setup
	bash scripts/build_cpu_image.sh

clean:
	rm -rf $(VENV) node_modules build .devhost
