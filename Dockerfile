# syntax=docker/dockerfile:1
# The ests image: one static binary (`ests controller|static-ip|webhook|extender|crd`) on a
# distroless base, running as a non-root user. The Helm chart (charts/ests) runs it.
#
#   docker build -t <registry>/ests:<version> .
#
# The build stage runs on the target platform (for several: `docker buildx build --platform
# linux/amd64,linux/arm64`, emulated), so no cross toolchain is needed.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
# musl for a static binary; musl-tools gives ring's C and assembly parts a musl compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked -p ests --target "$target" \
 && install -D -m 0755 "target/$target/release/ests" /out/ests

# distroless/static: no shell, no package manager; CA certificates and /etc/passwd only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ests /usr/local/bin/ests
# The nonroot user of distroless (65532), as the chart's securityContext expects.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ests"]
CMD ["--help"]
