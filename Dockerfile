# build-state: the Concourse resource type (check, in, out at /opt/resource)
# and the build-state CLI, in one small image.
#
#   docker build -t registry.example.com/build-state:1 .
#   docker build --target tests .   # the test suite, in the image
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/build-state:1 --push .
#
# Base images are pinned by tag. The binaries are built natively for each
# platform (buildx runs arm64 under emulation where needed): no cross tools.

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
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin build-state

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

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/build-state /usr/local/bin/build-state
# One binary, three names: it picks check, in or out from the name it is run by.
RUN mkdir -p /opt/resource \
 && ln -s /usr/local/bin/build-state /opt/resource/check \
 && ln -s /usr/local/bin/build-state /opt/resource/in \
 && ln -s /usr/local/bin/build-state /opt/resource/out
