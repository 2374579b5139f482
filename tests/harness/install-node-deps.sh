#!/usr/bin/env bash
# Installs the Debian packages the harness's real node needs, when any is missing: runc (the
# OCI runtime containerd runs), the CNI reference plugins (bridge, host-local, loopback, ...),
# iptables and conntrack (kube-proxy), busybox-static (the test image), gcc and libc6-dev (the
# static pause binary). Needs root (apt-get); does nothing when all are installed.
set -euo pipefail
PACKAGES=(runc containernetworking-plugins iptables conntrack busybox-static gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-node-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" != 0 ]; then
  echo "install-node-deps: not root; install these Debian packages: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
