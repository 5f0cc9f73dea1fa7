# build-state: the Concourse resource type (check, in, out at /opt/resource)
# and the build-state CLI, in one small image.
#
#   docker build -t registry.example.com/build-state:1 .
#   docker build --target tests .   # the test suite, in the image
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/build-state:1 --push .
#   scripts/image                   # the same, with Docker or without (buildah)
#
# Base images are pinned by tag. The binaries are built natively for each
# platform (buildx runs arm64 under emulation where needed): no cross tools.
#
# The builder stage leaves the image's files under /out, in the layout
# `scripts/package` writes; `--build-context builder=DIR` (Docker buildx,
# buildah) replaces it with a host's release build in DIR/out. The final
# stage runs nothing: two COPYs onto the base, the same bytes each build.

ARG RUST_IMAGE=rust:1.95-slim-trixie
ARG BASE_IMAGE=debian:trixie-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Dependencies first, so a source change does not rebuild the AWS SDK.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin build-state \
 && rm -rf src
COPY src ./src
COPY scripts/package ./scripts/package
RUN touch src/main.rs src/lib.rs && scripts/package /out

# The test suite against a real S3 server (MiniStack, installed from PyPI by
# the project's own tests/servers/start.sh), with promtool and Chromium for
# the metrics and page checks: nothing from outside this repository.
FROM builder AS tests
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates openssl \
      util-linux prometheus chromium zsh fish \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo test --locked

# The CA certificates (the system's roots every S3 endpoint is trusted by;
# a private one adds its own with the source's ca_bundle): only the bundle
# goes on, not apt's lists and logs.
FROM ${BASE_IMAGE} AS certs
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates

FROM ${BASE_IMAGE}
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# One binary, three names: it picks check, in or out from the name it is
# run by (/opt/resource/{check,in,out} link to /usr/local/bin/build-state).
COPY --from=builder /out/ /
