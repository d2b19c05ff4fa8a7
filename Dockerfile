# syntax=docker/dockerfile:1
#
# One image for every service: order-service, customer-service,
# inventory-service and reporting-service all live in /usr/local/bin; pick one with the container
# command (see docker-compose.yml), e.g. `docker run IMAGE customer-service`.
#
#   docker build -t dbps/services:local .
#
# Needs BuildKit (the default builder of Docker 23+) for the cache mounts.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- builder ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

WORKDIR /build

# Every workspace member (Cargo.toml `members`; cargo needs each manifest to
# resolve the workspace): the contracts crate at the root (build.rs compiles
# proto/ with a vendored protoc, so no protoc is installed here), the broker,
# the services, the dbps CLI, the bench, the testkit and the fault suite.
# `scripts/check-docker-context.sh` (run by `make lint`) fails when a member
# is missing here or excluded by .dockerignore.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src/ src/
COPY proto/ proto/
COPY broker/ broker/
COPY services/ services/
COPY cli/ cli/
COPY bench/ bench/
COPY testkit/ testkit/
COPY tests/faults/ tests/faults/

# The target dir is a cache mount, so the binaries are copied out of it in the
# same step. The four services and the dbps admin CLI are built.
RUN --mount=type=cache,id=dbps-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=dbps-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=dbps-target,target=/build/target,sharing=locked \
    cargo build --release --locked \
        -p order-service -p customer-service -p inventory-service -p reporting-service -p dbps-cli \
 && mkdir -p /out \
 && cp target/release/order-service \
       target/release/customer-service \
       target/release/inventory-service \
       target/release/reporting-service \
       target/release/dbps \
       /out/

# ---------------------------------------------------------------- runtime ----
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates is left unpinned on purpose: it should follow Debian's updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dbps \
 && useradd --system --uid 10001 --gid dbps --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dbps

COPY --from=builder /out/order-service /out/customer-service /out/inventory-service \
     /out/reporting-service /out/dbps /usr/local/bin/

USER 10001:10001

ENV LOG_FORMAT=json

# 50051 order, 50052 customer, 50053 inventory, 50054 reporting (each binary's
# default GRPC_ADDR).
EXPOSE 50051 50052 50053 50054

# No ENTRYPOINT: the command names the binary, e.g. ["order-service"]
# (`serve` is the default subcommand; `bootstrap` and `healthcheck` also exist).
CMD ["order-service"]
