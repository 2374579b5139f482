# syntax=docker/dockerfile:1
# The ests image: the `ests` binary (`ests controller|static-ip|webhook|extender|crd`) with the
# shared libraries it links (glibc, libgcc_s) on an empty base, running as the non-root user
# 65532. The Helm chart (charts/ests) runs it.
#
#   docker build -t <registry>/ests:<version> .
#
# This is the image the test harness builds without a container builder
# (tests/testenv/src/real_node/images.rs, `images::ests`): the same glibc build of the same
# binary, the libraries `ldd` lists at the paths it lists them, /etc/passwd with `nonroot`,
# entrypoint /usr/local/bin/ests. The harness runs its debug build; this builds the release.
#
# The build stage runs on the target platform (for several: `docker buildx build --platform
# linux/amd64,linux/arm64`, emulated), so no cross toolchain is needed.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ests \
 && install -D -m 0755 target/release/ests /out/usr/local/bin/ests \
 && for lib in $(ldd target/release/ests | grep -o '/[^ ]*'); do \
      install -D -m 0755 "$(readlink -f "$lib")" "/out$lib"; \
    done \
 && mkdir -p /out/etc /out/tmp && chmod 1777 /out/tmp \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/out/etc/passwd

# Nothing else: no shell, no package manager.
FROM scratch
COPY --from=build /out/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ests"]
CMD ["--help"]
