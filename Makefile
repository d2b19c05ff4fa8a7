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

.PHONY: cluster-up
cluster-up: ## The production topology as native processes: 3 RabbitMQ nodes, a Postgres primary + replica per service, 2 replicas of each service
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service
	@scripts/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop exactly what `make cluster-up` started and delete its state directory
	@scripts/cluster.sh down

.PHONY: cluster-demo
cluster-demo: ## Against `make cluster-up`: write through each service's replica 1, read through replica 2, check the whole flow
	@scripts/cluster-demo.sh

.PHONY: test
test: $(VENV)/.installed clients/typescript/node_modules/.installed ## Run every test: unit, gRPC integration, end to end, and the Python and TypeScript clients
	@scripts/ensure-infra.sh
	cargo test --workspace
	@scripts/python-client-test.sh
	@scripts/typescript-client-test.sh

.PHONY: faults
faults: ## Fault suite R1-R6: real processes, injected faults, reconciliation (stops and restarts the local RabbitMQ and Postgres)
	@scripts/ensure-infra.sh
	cargo build --release --features failpoints -p order-service -p customer-service -p inventory-service -p reporting-service
	cargo run --release -p faults -- --bin-dir target/release $(FAULTS_ARGS)

.PHONY: cluster-faults
cluster-faults: ## Cluster fault suite R7-R11: replicas, broker node and database failover under load (starts scripts/cluster.sh fresh, always stops it)
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service -p faults
	@scripts/cluster.sh up  # refuses if a cluster runs; stops what it started if it fails
	@trap 'scripts/cluster.sh down' EXIT; target/release/faults --cluster $(CLUSTER_FAULTS_ARGS)

.PHONY: bench
bench: ## P1-P7 against raw baselines in one run (release build, about 11 min); target/bench/latest.json, README table
	@scripts/ensure-infra.sh
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service -p bench
	target/release/bench
	@$(MAKE) --no-print-directory bench-table

.PHONY: bench-quick
bench-quick: ## The same figures from shorter runs (about 3 min)
	@scripts/ensure-infra.sh
	cargo build --release -p order-service -p customer-service -p inventory-service -p reporting-service -p bench
	target/release/bench --quick
	@$(MAKE) --no-print-directory bench-table

.PHONY: bench-table
bench-table: ## Regenerate the README's Performance table from target/bench/latest.json
	cargo build --release -p bench
	target/release/bench table --json target/bench/latest.json --readme README.md

.PHONY: lint
lint: ## Formatting, clippy with warnings denied, buf lint of the contracts, the Docker build context
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@scripts/check-docker-context.sh
	@if command -v buf >/dev/null; then buf lint; \
	  elif command -v npx >/dev/null; then npx --yes @bufbuild/buf@1 lint; \
	  else echo "buf not found (npm install -g @bufbuild/buf); skipping buf lint"; fi

.PHONY: schema-check
schema-check: ## The diesel schema files against the migrations, in a scratch database (scripts/check-schema.sh --write regenerates them)
	@scripts/ensure-infra.sh
	@scripts/check-schema.sh

.PHONY: contracts
contracts: ## The event and gRPC contracts: AsyncAPI validation, buf breaking against proto/released.binpb, code vs docs/asyncapi.yaml
	@scripts/contracts.sh check

.PHONY: contracts-release
contracts-release: ## Rebuild proto/released.binpb (what buf breaking compares with) from the protos committed at HEAD
	@scripts/contracts.sh release HEAD

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

clients/typescript/node_modules/.installed: clients/typescript/package.json clients/typescript/package-lock.json
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error
	touch $@
