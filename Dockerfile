# syntax=docker/dockerfile:1
# The ests image: one static binary (`ests controller|static-ip|webhook|extender|crd`) on a
# distroless base, running as a non-root user. The Helm chart (charts/ests) runs it.
#
#   docker build -t <registry>/ests:<version> .
#
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 ...`; the build stage
# runs on the build host and cross-compiles to musl for the target platform.

ARG RUST_VERSION=1.89

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
# musl for a static binary; the C toolchain of the target for ring's assembly and C parts.
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl > /rust-target; cc=musl-tools ;; \
      arm64) echo aarch64-unknown-linux-musl > /rust-target; cc="musl-tools gcc-aarch64-linux-gnu" ;; \
      *) echo "unsupported architecture $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends $cc \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)"
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked -p ests --target "$target" \
 && install -D -m 0755 "target/$target/release/ests" /out/ests

# distroless/static: no shell, no package manager; CA certificates and /etc/passwd only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ests /usr/local/bin/ests
# The nonroot user of distroless (65532), as the chart's securityContext expects.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ests"]
CMD ["--help"]
