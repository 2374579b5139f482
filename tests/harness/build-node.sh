#!/usr/bin/env bash
# Builds what the harness's real node runs (tests/testenv/src/real_node): kubelet and
# kube-proxy from the same wrapper module as the control plane (tests/harness/build-bins.sh),
# containerd v2 with its runc shim and ctr from Go modules (CGO off, no btrfs/devmapper/zfs
# snapshotters), and a static `pause` for the sandbox image, built from Kubernetes' own
# pause.c. Cached outside the repository under a directory named after the pinned versions, so
# they are rebuilt only when a version changes or a binary is missing. Prints that directory on
# its last line of stdout.
#
# The Debian packages the node also needs (runc, containernetworking-plugins, iptables,
# conntrack, busybox-static, gcc, libc6-dev) are installed by tests/harness/install-node-deps.sh.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.4}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
CACHE="${ESTS_CACHE:-$HOME/.cache/ests}"
OUT="$CACHE/bin-node-k8s${K8S_VERSION}-containerd${CONTAINERD_VERSION}"
WANT=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr pause)
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"

lock_cache "$CACHE"
have_all() { for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
mkdir -p "$OUT"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"

if [ ! -x "$OUT/kubelet" ] || [ ! -x "$OUT/kube-proxy" ]; then
  log "kubelet and kube-proxy v$K8S_VERSION"
  W="$(k8s_wrapper_module "$CACHE" "$K8S_VERSION")"; cd "$W"
  go build -mod=mod -p "$(nproc)" -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >&2
fi

if [ ! -x "$OUT/containerd" ] || [ ! -x "$OUT/containerd-shim-runc-v2" ] || [ ! -x "$OUT/ctr" ]; then
  log "containerd $CONTAINERD_VERSION"
  # containerd v2 has no replace directives: a plain `go install` by version. The shim must be
  # the v2 one (containerd finds it on PATH; the harness puts this directory first).
  GOBIN="$OUT" go install -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" >&2
fi

if [ ! -x "$OUT/pause" ]; then
  log "pause (static, from k8s.io/kubernetes@v$K8S_VERSION/build/pause/linux/pause.c)"
  command -v gcc >/dev/null || { log "gcc is not installed (tests/harness/install-node-deps.sh)"; exit 1; }
  src="$(go env GOMODCACHE)/k8s.io/kubernetes@v$K8S_VERSION/build/pause/linux/pause.c"
  [ -f "$src" ] || go mod download "k8s.io/kubernetes@v$K8S_VERSION" >&2
  [ -f "$src" ] || { log "no pause.c at $src"; exit 1; }
  gcc -Os -static -DVERSION="v$K8S_VERSION" -o "$OUT/pause.tmp" "$src" >&2
  strip "$OUT/pause.tmp" && mv "$OUT/pause.tmp" "$OUT/pause"
fi

have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
