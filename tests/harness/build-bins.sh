#!/usr/bin/env bash
# Builds the control-plane binaries the tests and the demo run (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, helm) from Go modules with the
# machine's Go toolchain. Binaries are cached outside the repository under a directory named
# after every pinned version, so they are rebuilt only when a version changes or they are missing.
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.36.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Karmada's module has no replace directives but the proxy refuses its version list, so it is
# fetched by exact version through a wrapper module. v1.16.0 builds with Go 1.26.
KARMADA_VERSION="${KARMADA_VERSION:-v1.16.0}"
CACHE="${ESTS_CACHE:-$HOME/.cache/ests}"
OUT="$CACHE/bin-k8s${K8S_VERSION}-etcd${ETCD_VERSION}-kwok${KWOK_VERSION}-helm${HELM_VERSION}"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm karmadactl)
# karmadactl is cached under its own version (so a new Karmada pin does not rebuild
# Kubernetes) and linked into $OUT.
KARMADA_OUT="$CACHE/bin-karmada${KARMADA_VERSION}"
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

karmadactl_linked() { [ "$(readlink "$OUT/karmadactl" 2>/dev/null)" = "$KARMADA_OUT/karmadactl" ]; }
lock_cache "$CACHE"
have_all() {
  for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  karmadactl_linked
}
if have_all; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { echo "build-bins: go is not installed" >&2; exit 1; }
mkdir -p "$OUT"
# Never download another Go toolchain: pinned versions build with the installed one.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"

if [ ! -x "$OUT/kube-apiserver" ] || [ ! -x "$OUT/kube-controller-manager" ] \
  || [ ! -x "$OUT/kube-scheduler" ] || [ ! -x "$OUT/kubectl" ]; then
  log "kubernetes v$K8S_VERSION"
  W="$(k8s_wrapper_module "$CACHE" "$K8S_VERSION")"; cd "$W"
  go build -mod=mod -p "$(nproc)" -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl >&2
fi

if [ ! -x "$OUT/etcd" ]; then
  log "etcd v$ETCD_VERSION"
  # etcd's server module replaces its siblings with relative paths: build through a wrapper too.
  W="$CACHE/wrap-etcd-$ETCD_VERSION"; rm -rf "$W"; mkdir -p "$W"; cd "$W"
  go mod init ests.local/etcdbin >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v${ETCD_VERSION}" >&2
  go build -mod=mod -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3 >&2
fi

if [ ! -x "$OUT/kwok" ]; then
  log "kwok $KWOK_VERSION"
  GOBIN="$OUT" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" >&2
fi

if [ ! -x "$OUT/helm" ]; then
  log "helm $HELM_VERSION"
  GOBIN="$OUT" go install -ldflags "-s -w \
 -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${MINOR} \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${MINOR}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
fi

if [ ! -x "$KARMADA_OUT/karmadactl" ]; then
  log "karmadactl $KARMADA_VERSION"
  W="$CACHE/wrap-karmada-${KARMADA_VERSION}"; rm -rf "$W"; mkdir -p "$W" "$KARMADA_OUT"; cd "$W"
  go mod init ests.local/karmadactl >/dev/null 2>&1
  go get "github.com/karmada-io/karmada@${KARMADA_VERSION}" >&2
  go build -mod=mod -ldflags "-s -w -X github.com/karmada-io/karmada/pkg/version.gitVersion=${KARMADA_VERSION}" \
    -o "$KARMADA_OUT/karmadactl" \
    github.com/karmada-io/karmada/cmd/karmadactl >&2
fi
karmadactl_linked || ln -sfn "$KARMADA_OUT/karmadactl" "$OUT/karmadactl"

have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
