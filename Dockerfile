# syntax=docker/dockerfile:1
# The ests image: the `ests` binary (`ests controller|static-ip|webhook|extender|node|crd`)
# with the shared libraries it links (glibc, libgcc_s) on an empty base, running as the
# non-root user 65532, and beside it the CNI IPAM plugin `ests-cni` at
# /usr/local/bin/ests-cni. The Helm chart (charts/ests) runs it; with `node.enabled` its
# DaemonSet's init container (`ests node install-cni`) copies ests-cni onto each node.
#
#   docker build -t <registry>/ests:<version> .
#
# ests-cni is linked statically (glibc's static libraries, `+crt-static`, a static-pie
# binary): it runs on the host, executed by the container runtime, not in this image, so it
# must not depend on the host's libc being the one it was built against. It uses no name
# service (only a unix socket), so static glibc needs nothing at run time.
#
# This is the image the test harness builds without a container builder
# (tests/testenv/src/real_node/images.rs, `images::ests`): the same glibc build of the same
# binaries, the libraries `ldd` lists at the paths it lists them, /etc/passwd with `nonroot`,
# entrypoint /usr/local/bin/ests. The harness runs its debug builds (ests-cni dynamically
# linked: its host is the machine it was built on); this builds the release.
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
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p ests-cni --target "$target" \
 && install -D -m 0755 target/release/ests /out/usr/local/bin/ests \
 && install -D -m 0755 "target/$target/release/ests-cni" /out/usr/local/bin/ests-cni \
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
