# The palisade image: the one `palisade` binary (server and CLI) on a small runtime image
# with no shell, run as a non-root user. `make image` builds it as
# ghcr.io/palisade-db/palisade:<version>, the Helm chart's default image.
#
#   docker build -t ghcr.io/palisade-db/palisade:0.1.0 .
#   docker run --rm -p 7379:7379 -v palisade-data:/var/lib/palisade ghcr.io/palisade-db/palisade:0.1.0
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Only the binary: tests, benches and examples stay out of the image's build.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin palisade \
    && cp target/release/palisade /palisade \
    && /palisade --version \
    && mkdir -p /empty/var/lib/palisade

# glibc and libgcc, CA certificates, a non-root user (65532) and nothing else: no shell,
# no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /palisade /usr/local/bin/palisade
# The data dir, owned by the user the node runs as (a named volume starts as a copy of it).
COPY --from=build --chown=65532:65532 /empty/var/lib/palisade /var/lib/palisade
# One node out of the box: clients from outside the container, data in the volume. The
# Helm chart sets every listener and URL itself.
ENV PALISADE_DATA_DIR=/var/lib/palisade/data \
    PALISADE_LISTEN_CLIENT=0.0.0.0:7379
WORKDIR /var/lib/palisade
VOLUME /var/lib/palisade
USER 65532:65532
EXPOSE 7379 7380
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["serve"]
