# extauthz — developer entry points. `make run` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup test-deps run test lint protos bench-deps bench-grpc bench-envoy bench-scale bench-stacks \
        bench-rules bench-cache soak fuzz clean compiled pure

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Tools the tests use that PyPI does not ship: promtool (Debian's prometheus package) checks
## deploy/prometheus, h2load (nghttp2-client) drives deploy/measure.py's test. Installed with apt
## when running as root; otherwise those tests are skipped.
test-deps:
	@command -v h2load >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client \
	  >/dev/null 2>&1; } || echo "h2load could not be installed: the measure.py test will be skipped"
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq; apt-get install -y -qq --no-install-recommends prometheus; } \
	    || echo "promtool could not be installed: the promtool tests will be skipped"; \
	  else echo "promtool missing (apt-get install prometheus): the promtool tests will be skipped"; fi; }

## Start extauthz behind a real Envoy (mTLS) on the example policies; prints curl commands.
run: setup
	$(BIN)/extauthz demo --policies policies

## The whole test suite: generated code fresh, lint, types, import contracts, then the Check core's
## tests on the pure-Python package (the fallback), then every test on the mypyc build of the hot
## path (what runs fast: `make compiled`; without a C compiler or the Python headers, on pure
## Python again). The tree is left compiled; `make pure` undoes it.
PURE_SMOKE := tests/pipeline tests/envoy tests/cli/test_compiled.py tests/decision/test_cache.py \
              tests/decision/test_hit_record.py tests/decision/test_response_identity.py \
              tests/decision/test_audit_caps.py tests/decision/test_record_input.py
test: setup test-deps
	$(BIN)/python -m extauthz.tools.protogen --check
	$(BIN)/ruff check extauthz tests bench
	$(BIN)/mypy extauthz
	$(BIN)/lint-imports
	$(BIN)/python bench/compiled.py clean
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PURE_SMOKE)
	$(BIN)/python -c 'import setuptools' 2>/dev/null || $(BIN)/python -m pip install -q setuptools
	$(BIN)/python bench/compiled.py build --if-possible
	$(BIN)/python -m pytest -q

## Lint, types and the import contracts (pyproject.toml [tool.importlinter]; docs/architecture.md).
lint: setup
	$(BIN)/ruff check extauthz tests bench
	$(BIN)/mypy extauthz
	$(BIN)/lint-imports

## Compile the Check hot path with mypyc in place (needs gcc and the Python headers;
## bench/README.md "Compiled with mypyc"). `make pure` removes it: the pure-Python package.
compiled: setup
	$(BIN)/python -c 'import setuptools' 2>/dev/null || $(BIN)/python -m pip install -q setuptools
	$(BIN)/python bench/compiled.py build

pure:
	$(BIN)/python bench/compiled.py clean

## Regenerate extauthz/_pb from protos/.
protos: setup
	$(BIN)/python -m extauthz.tools.protogen

## Benchmarks (bench/README.md), all through bench/run.py with the venv's Python (which finds
## the venv's h2corn and py-spy itself). h2load from Debian's nghttp2-client, matplotlib for charts.
bench-deps: setup
	command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client wrk)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(MAKE) --no-print-directory compiled

bench-grpc: bench-deps
	$(BIN)/python bench/run.py grpc --open-loop

bench-envoy: bench-deps
	$(BIN)/python bench/run.py envoy --open-loop

bench-scale: bench-deps
	$(BIN)/python bench/run.py scale --open-loop

bench-stacks: bench-deps
	$(BIN)/python bench/run.py stacks

## In process, seconds each: policy-size sweep (10, 1,000, 10,000 rules); decision cache and audit on/off.
bench-rules: setup
	$(BIN)/python bench/run.py rules

bench-cache: setup
	$(BIN)/python bench/run.py cache

## Soak: 5 minutes through Envoy (--workers 2) with hot reloads, bundle and audit rotations, slow
## streams and a worker SIGKILL every 8 s; JSON report in bench/results/soak.json.
soak: setup
	$(BIN)/python bench/run.py soak --seconds 300

## Longer fuzzing: 10 minutes per target (check, fields, policy) (see tests/fuzz/README.md).
fuzz: setup
	mkdir -p .fuzz/check .fuzz/fields .fuzz/policy
	$(BIN)/python tests/fuzz/run_atheris.py check -max_total_time=600 -timeout=10 -max_len=4096 \
	    -print_final_stats=1 -artifact_prefix=.fuzz/check/ .fuzz/check
	$(BIN)/python tests/fuzz/run_atheris.py fields -max_total_time=600 -timeout=10 -max_len=4096 \
	    -print_final_stats=1 -artifact_prefix=.fuzz/fields/ .fuzz/fields
	$(BIN)/python tests/fuzz/run_atheris.py policy -max_total_time=600 -timeout=10 -max_len=4096 \
	    -dict=tests/fuzz/policy.dict -print_final_stats=1 -artifact_prefix=.fuzz/policy/ .fuzz/policy

clean:
	[ ! -x $(BIN)/python ] || $(BIN)/python bench/compiled.py clean
	rm -rf $(VENV) .demo .fuzz build *.egg-info .pytest_cache .mypy_cache .ruff_cache
