# Shared by the build scripts: one build per cache at a time, and how Kubernetes binaries are
# built from Go modules.

log() { echo "$(basename "$0"): $*" >&2; }

# lock_cache CACHE: holds the cache's build lock until the script exits. Two test runs
# starting at once (a fresh machine, a second checkout) would otherwise rebuild the same
# wrapper modules under each other's feet (`rm -rf` of a directory the other one builds in:
# "getwd: no such file or directory"); the second waits and then finds everything built.
lock_cache() {
  mkdir -p "$1"
  exec 9>"$1/.build.lock"
  flock 9
}

# k8s_wrapper_module CACHE VERSION: prints the directory of a Go module that requires
# k8s.io/kubernetes@vVERSION, creating it when missing. k8s.io/kubernetes maps its staging
# modules to ./staging with replace directives, so it cannot be `go install`ed: the wrapper
# replaces each one with its published v0.x version.
k8s_wrapper_module() {
  local cache=$1 version=$2 w="$1/wrap-k8s-$2"
  if [ -f "$w/go.sum" ] && grep -q "k8s.io/kubernetes v$version" "$w/go.mod" 2>/dev/null; then
    echo "$w"; return 0
  fi
  rm -rf "$w"; mkdir -p "$w"
  (
    cd "$w"
    go mod init ests.local/k8sbins >/dev/null 2>&1
    local dl gomod mods args=() m
    dl="$(go mod download -json "k8s.io/kubernetes@v${version}" || true)"
    gomod="$(echo "$dl" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [ -n "$gomod" ] || { log "cannot download k8s.io/kubernetes@v${version}: $dl"; exit 1; }
    mods=$(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/k8s.io/.*|\1|p' "$gomod")
    [ -n "$mods" ] || { log "no staging modules found in $gomod"; exit 1; }
    for m in $mods; do args+=("-replace=${m}=${m}@v0.${version#1.}"); done
    go mod edit "${args[@]}"
    go get "k8s.io/kubernetes@v${version}" >&2
  ) || return 1
  echo "$w"
}

# k8s_ldflags VERSION: the version stamps `kubectl version` and the components report.
k8s_ldflags() {
  local minor; minor="$(echo "$1" | cut -d. -f2)"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=v$1 \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
}
