# Invicta's entry points. A fresh machine needs only the Rust toolchain: `make test` installs the
# rest (the wasm32-wasip2 target, libclang for the FoundationDB type-check).

CARGO_TARGET_DIR ?= $(HOME)/.cache/invicta/target
export CARGO_TARGET_DIR
LISTEN ?= 127.0.0.1:8080
PUBLIC_LISTEN ?= 127.0.0.1:8081
DATA_DIR ?= ./.invicta
INVICTA := $(CARGO_TARGET_DIR)/debug/invicta

.PHONY: run build test check deps fmt-check clippy fdb-check unit-tests api-fuzz infra-check bench profile components \
	browser-deps browser-tests compat-reference examples

# schemathesis (from PyPI) in a virtualenv beside the target directory.
SCHEMATHESIS_VERSION := 4.32.5
ST_VENV ?= $(HOME)/.cache/invicta/schemathesis-$(SCHEMATHESIS_VERSION)

# kubernetes-validate (from PyPI, with the Kubernetes schemas it bundles) for infra/k8s.
KV_VERSION := 1.37.0
KV_VENV ?= $(HOME)/.cache/invicta/kubernetes-validate-$(KV_VERSION)

## run: build the server and the example components, then start the all-in-one server on
## $(LISTEN) (tenants' routes on $(PUBLIC_LISTEN)), data under $(DATA_DIR); the first time it
## makes a demo tenant with a worker and prints its key for the console at /console
run: build components
	$(INVICTA) server --listen $(LISTEN) --public-listen $(PUBLIC_LISTEN) --data-dir $(DATA_DIR) \
		--demo tests/components/wasm/counter.wasm

# The server alone resolves the same features as the test build (shared/feature-set), so
# `make run`, `make test` and `make api-fuzz` compile the dependencies once between them.
build:
	cargo build -p invicta

## test: install what the tests need, then every check and every test
test: deps components examples check

check: fmt-check clippy fdb-check infra-check unit-tests api-fuzz browser-tests compat-reference

deps:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@# bindgen in the foundationdb crate needs libclang to type-check the fdb backend.
	@# (libclang-cpp, which some images carry, is another library: it does not count.)
	@ls /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so* /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null | grep -q . || \
		{ (apt-get update -qq || sudo apt-get update -qq) && \
		  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang1-14 || \
		   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang1-14); }

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

## fdb-check: the FoundationDB backend cannot link here (no libfdb_c), so it is type-checked
fdb-check:
	cargo clippy -p invicta-store --features fdb --all-targets -- -D warnings

unit-tests:
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

# Selenium (from PyPI) in a virtualenv; Chromium and its driver from the distribution.
SELENIUM_VERSION := 4.38.0
SELENIUM_VENV ?= $(HOME)/.cache/invicta/selenium-$(SELENIUM_VERSION)
SCREENSHOTS ?= $(CARGO_TARGET_DIR)/console-screenshots

browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ (apt-get update -qq || sudo apt-get update -qq) && \
		  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver || \
		   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver); }
	@test -x $(SELENIUM_VENV)/bin/python -a -d $(SELENIUM_VENV)/lib || { python3 -m venv $(SELENIUM_VENV) && \
		$(SELENIUM_VENV)/bin/pip install -q 'selenium==$(SELENIUM_VERSION)'; }

## browser-tests: the console in headless Chromium against a real server (screenshots in
## $(SCREENSHOTS))
browser-tests: browser-deps build components
	$(SELENIUM_VENV)/bin/python tests/browser/run.py $(INVICTA) tests/components/wasm $(SCREENSHOTS)

# wasmtime from PyPI: a second reference host, its own build and its own WASI.
WASMTIME_PY_VERSION := 51.0.0
WASMTIME_PY_VENV ?= $(HOME)/.cache/invicta/wasmtime-py-$(WASMTIME_PY_VERSION)

## compat-reference: guests through Invicta against wasmtime-py, call by call, and after SIGKILL
compat-reference: build components
	@test -x $(WASMTIME_PY_VENV)/bin/python -a -d $(WASMTIME_PY_VENV)/lib || { python3 -m venv $(WASMTIME_PY_VENV) && \
		$(WASMTIME_PY_VENV)/bin/pip install -q 'wasmtime==$(WASMTIME_PY_VERSION)'; }
	$(WASMTIME_PY_VENV)/bin/python tests/compat/reference.py $(INVICTA) tests/components/wasm

## infra-check: the Kubernetes manifests in infra/k8s against the API's schemas, strictly
infra-check:
	@test -x $(KV_VENV)/bin/kubernetes-validate || { python3 -m venv $(KV_VENV) && \
		$(KV_VENV)/bin/pip install -q 'kubernetes-validate==$(KV_VERSION)'; }
	$(KV_VENV)/bin/kubernetes-validate --strict --quiet infra/k8s/*.yaml

## api-fuzz: schemathesis against a running server, from the OpenAPI document it serves
api-fuzz: build components
	@test -x $(ST_VENV)/bin/st || { python3 -m venv $(ST_VENV) && \
		$(ST_VENV)/bin/pip install -q 'schemathesis==$(SCHEMATHESIS_VERSION)'; }
	python3 tests/api-fuzz/run.py $(INVICTA) $(ST_VENV)/bin/st

## bench: the benchmark scenarios of loadtests/, in release mode
bench: components examples
	cargo build --release -p invicta -p invicta-loadtests
	$(CARGO_TARGET_DIR)/release/invicta-loadtests store
	$(CARGO_TARGET_DIR)/release/invicta-loadtests invoke --server-bin $(CARGO_TARGET_DIR)/release/invicta
	$(CARGO_TARGET_DIR)/release/invicta-loadtests admission
	$(CARGO_TARGET_DIR)/release/invicta-loadtests serve --server-bin $(CARGO_TARGET_DIR)/release/invicta
	$(CARGO_TARGET_DIR)/release/invicta-loadtests upload --server-bin $(CARGO_TARGET_DIR)/release/invicta
	$(CARGO_TARGET_DIR)/release/invicta-loadtests recovery --server-bin $(CARGO_TARGET_DIR)/release/invicta

# A CPU profile of the server and the load generator under the invoke scenario: a release build
# with frame pointers (in a target directory of its own, so the ordinary one is not rebuilt),
# recorded by perf with call graphs. Read it with `perf report -i $(PROFILE_DATA)`.
PROFILE_TARGET_DIR ?= $(CARGO_TARGET_DIR)-frame-pointers
PROFILE_DATA ?= $(PROFILE_TARGET_DIR)/perf.data
profile: components
	@command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf"; exit 1; }
	CARGO_TARGET_DIR=$(PROFILE_TARGET_DIR) RUSTFLAGS=-Cforce-frame-pointers=yes cargo build --release -p invicta -p invicta-loadtests
	perf record -F 999 -g -o $(PROFILE_DATA) -- $(PROFILE_TARGET_DIR)/release/invicta-loadtests invoke --server-bin $(PROFILE_TARGET_DIR)/release/invicta
	@echo "profile in $(PROFILE_DATA): perf report -i $(PROFILE_DATA) --comm oplog-committer (or tokio-rt-worker)"

# componentize-py (from PyPI) for the Python example.
COMPONENTIZE_PY_VERSION := 0.25.1
COMPONENTIZE_PY_VENV ?= $(HOME)/.cache/invicta/componentize-py-$(COMPONENTIZE_PY_VERSION)

# jco and ComponentizeJS (from npm) for the JavaScript example (jco 1.35 cannot read WIT files).
JCO_VERSION := 1.34.0
COMPONENTIZE_JS_VERSION := 0.23.0
JCO_DIR ?= $(HOME)/.cache/invicta/jco-$(JCO_VERSION)-$(COMPONENTIZE_JS_VERSION)

## examples: the examples under examples/ (other languages than Rust) into examples/wasm
examples:
	@test -x $(COMPONENTIZE_PY_VENV)/bin/componentize-py || { python3 -m venv $(COMPONENTIZE_PY_VENV) && \
		$(COMPONENTIZE_PY_VENV)/bin/pip install -q 'componentize-py==$(COMPONENTIZE_PY_VERSION)'; }
	@command -v node >/dev/null && command -v npm >/dev/null || \
		{ (apt-get update -qq || sudo apt-get update -qq) && \
		  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm || \
		   sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm); }
	@test -x $(JCO_DIR)/node_modules/.bin/jco || npm install --silent --no-audit --no-fund --prefix $(JCO_DIR) \
		'@bytecodealliance/jco@$(JCO_VERSION)' '@bytecodealliance/componentize-js@$(COMPONENTIZE_JS_VERSION)'
	@mkdir -p examples/wasm
	cd examples/python && $(COMPONENTIZE_PY_VENV)/bin/componentize-py -d wit -w counter componentize app \
		-o ../wasm/counter_py.wasm
	cd examples/python-notes && $(COMPONENTIZE_PY_VENV)/bin/componentize-py -d wit -w notes componentize app \
		-o ../wasm/notes_py.wasm
	$(JCO_DIR)/node_modules/.bin/jco componentize examples/javascript/counter.js \
		--wit examples/javascript/wit/counter.wit --world-name counter -o examples/wasm/counter_js.wasm
	CARGO_TARGET_DIR=$(HOME)/.cache/invicta/examples-target cargo build -q --release \
		--target wasm32-wasip2 --manifest-path examples/rust/Cargo.toml
	cp $(HOME)/.cache/invicta/examples-target/wasm32-wasip2/release/counter_rs.wasm examples/wasm/

## components: the guest components under tests/components (wasm32-wasip2) into tests/components/wasm
components:
	bash tests/components/build.sh
