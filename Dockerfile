# syntax=docker/dockerfile:1
# The one Partner Ledger binary (`up`, `serve <service>`), built with EventStoreDB / KurrentDB
# support, on a distroless runtime: no shell, no package manager, glibc and libgcc only (what
# the binary links), running as the unprivileged user 65532.
#
#   docker build -t partner-ledger:0.1.0 .
#   docker run --rm -p 50051:50051 partner-ledger:0.1.0          # `up` on an in-image data dir
#
# The Kubernetes manifests (deploy/) pass `args` and PL_* variables; the CMD below is only for
# a plain `docker run`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the protos in Rust (no protoc); aws-lc-rs (the EventStoreDB client's TLS)
# and mimalloc (the binary's allocator, linked statically) need the C compiler this image has.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p partner-ledger --features eventstoredb \
    && install -D -m 0755 target/release/partner-ledger /out/bin/partner-ledger \
    && install -d -m 0700 /out/data

# Same Debian release as the build stage, so the glibc the binary was linked against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/partner-ledger /usr/local/bin/partner-ledger
COPY --from=build --chown=65532:65532 /out/data /var/lib/partner-ledger
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/partner-ledger"]
CMD ["up", "--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/partner-ledger"]
