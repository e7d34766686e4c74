# syntax=docker/dockerfile:1
#
# Portcullis container image: a static-ish Rust binary on distroless.
#
#   docker build -t portcullis:0.1.0 .
#   docker run --rm -v "$PWD/policies:/etc/portcullis/policies:ro" \
#     -e PORTCULLIS_DEMO_SECRET=... -p 9191:9191 -p 9090:9090 portcullis:0.1.0
#
# The runtime image has no shell and no package manager, runs as the
# distroless `nonroot` user (uid 65532) and needs no writable file system.
# k8s/base/deployment.yaml runs it with readOnlyRootFilesystem.

# Both base images are named by tag, not pinned by digest (no registry is
# reachable where this file is checked): pin them for your builds as
# docs/deployment.md, "The image and its base images", shows.
#
# Build on the same Debian release as the runtime image (bookworm = Debian
# 12): a binary linked on a newer glibc would not start on cc-debian12.
FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build reads (.dockerignore keeps the context to these):
# the manifest and lock file; src/; crates/ (the decision core, a
# dependency and a workspace member); migrations/, which
# src/grants_db/migrate.rs embeds with include_str!; benches/, because
# Cargo.toml declares [[bench]] targets and cargo refuses a manifest whose
# declared targets are missing; testkit/, a workspace member. Examples,
# tests and fuzz/ are discovered, not declared, so they may stay out.
# `make manifests` builds the binary from exactly this context.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY migrations ./migrations
COPY benches ./benches
COPY testkit ./testkit
RUN cargo build --release --locked --bin portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/portcullis /usr/local/bin/portcullis
# In-cluster defaults; flags given to `serve` win over them.
ENV PORTCULLIS_POLICIES=/etc/portcullis/policies \
    PORTCULLIS_LISTEN=0.0.0.0:9191 \
    PORTCULLIS_ADMIN_LISTEN=0.0.0.0:9090 \
    PORTCULLIS_LOG=info
# ext_authz v3 + grpc.health.v1; admin HTTP (/live, /ready, /metrics)
EXPOSE 9191 9090
# `nonroot` by number: Kubernetes' runAsNonRoot can only verify a numeric user.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portcullis", "serve"]
