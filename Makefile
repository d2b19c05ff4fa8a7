# Every target works on a fresh machine with the local Postgres and RabbitMQ
# (started if down). `make help` lists them.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := clients/python/.venv
PYTHON := $(VENV)/bin/python

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: up
up: ## Start the whole system (Docker Compose, or natively without a Docker engine) and wait until it is SERVING
	@scripts/up.sh

.PHONY: down
down: ## Stop exactly what `make up` started
	@scripts/down.sh

.PHONY: demo
demo: ## Run the README's grpcurl walkthrough against the running system and check its results
	@scripts/demo.sh

.PHONY: test
test: $(VENV)/.installed ## Run every test: unit, gRPC integration, end to end, and the Python client
	@scripts/ensure-infra.sh
	cargo test --workspace
	@scripts/python-client-test.sh

.PHONY: faults
faults: ## Fault suite R1-R6: real processes, injected faults, reconciliation (stops and restarts the local RabbitMQ and Postgres)
	@scripts/ensure-infra.sh
	cargo build --release --features failpoints -p order-service -p customer-service -p inventory-service -p reporting-service
	cargo run --release -p faults -- --bin-dir target/release $(FAULTS_ARGS)

.PHONY: bench
bench: ## P1-P6 against raw baselines in one run (release build, about 10 min); target/bench/latest.json
	@scripts/ensure-infra.sh
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service -p bench
	target/release/bench

.PHONY: bench-quick
bench-quick: ## The same figures from shorter runs (about 2 min)
	@scripts/ensure-infra.sh
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service -p bench
	target/release/bench --quick

.PHONY: lint
lint: ## Formatting, clippy with warnings denied, and buf lint of the contracts
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@if command -v buf >/dev/null; then buf lint; \
	  elif command -v npx >/dev/null; then npx --yes @bufbuild/buf@1 lint; \
	  else echo "buf not found (npm install -g @bufbuild/buf); skipping buf lint"; fi

.PHONY: db
db: ## Create each service's database role and schema (idempotent; done at start by make up)
	@scripts/ensure-infra.sh
	cargo build -p order-service -p customer-service -p inventory-service -p reporting-service
	@for s in order customer inventory reporting; do \
	  ADMIN_DATABASE_URL=$${ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
	    target/debug/$$s-service bootstrap; done

.PHONY: rebuild-reporting
rebuild-reporting: ## Drop the reporting read models and replay the event log into them (the natively run stack)
	cargo build -p reporting-service
	target/debug/reporting-service rebuild

.PHONY: k8s-render
k8s-render: ## Render the Kubernetes overlays (deploy/k8s) to target/k8s/dev.yaml and target/k8s/production.yaml
	@deploy/k8s/render.sh

.PHONY: k8s-validate
k8s-validate: k8s-render ## Check them: strict Kubernetes 1.30+ schemas, the operators' resources, env vars and ports against the binaries
	target/k8s-tools/venv/bin/python deploy/k8s/validate.py target/k8s/dev.yaml target/k8s/production.yaml
	cargo build -p order-service -p customer-service -p inventory-service -p reporting-service
	target/k8s-tools/venv/bin/python deploy/k8s/check-env.py --bin-dir target/debug \
	  target/k8s/dev.yaml target/k8s/production.yaml docker-compose.yml

.PHONY: clients
clients: $(VENV)/.installed ## Generate the Python client stubs from proto/
	clients/python/generate.sh

$(VENV)/.installed: clients/python/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
	touch $@
