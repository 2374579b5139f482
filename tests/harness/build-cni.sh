#!/usr/bin/env bash
# Builds what the plugin's fast test tier (crates/cni/tests) runs ests-cni with: `cnitool`
# (libcni's command-line runtime) and the reference CNI plugins bridge, ptp, host-local and
# loopback, from Go modules with the machine's Go toolchain. These are the pinned upstream
# versions, not Debian's containernetworking-plugins 1.1.1 that the real node uses: the tier
# checks ests-cni against the current reference implementation of the spec (1.1.0: STATUS,
# GC). Cached outside the repository under a directory named after the pinned versions, so
# they are rebuilt only when a version changes or a binary is missing. Prints that directory
# on its last line of stdout.
set -euo pipefail

CNI_VERSION="${CNI_VERSION:-v1.3.0}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.9.1}"
CACHE="${ESTS_CACHE:-$HOME/.cache/ests}"
OUT="$CACHE/bin-cni${CNI_VERSION}-plugins${CNI_PLUGINS_VERSION}"
PLUGINS=(bridge ptp loopback)
WANT=(cnitool "${PLUGINS[@]}" host-local)
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

lock_cache "$CACHE"
have_all() { for b in "${WANT[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }
mkdir -p "$OUT"
# Never download another Go toolchain: pinned versions build with the installed one.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"

if [ ! -x "$OUT/cnitool" ]; then
  log "cnitool $CNI_VERSION"
  GOBIN="$OUT" go install -ldflags "-s -w" "github.com/containernetworking/cni/cnitool@$CNI_VERSION" >&2
fi

missing=()
for p in "${PLUGINS[@]}"; do
  [ -x "$OUT/$p" ] || missing+=("github.com/containernetworking/plugins/plugins/main/$p@$CNI_PLUGINS_VERSION")
done
[ -x "$OUT/host-local" ] \
  || missing+=("github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION")
if [ ${#missing[@]} -gt 0 ]; then
  log "reference plugins $CNI_PLUGINS_VERSION"
  # The plugins report their version through this variable (the VERSION command's "about").
  GOBIN="$OUT" go install -ldflags "-s -w \
 -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
    "${missing[@]}" >&2
fi

have_all || { log "some binaries are missing in $OUT"; exit 1; }
echo "$OUT"
