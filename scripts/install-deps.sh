#!/usr/bin/env bash
# Install the Debian packages that `make test` / `make lab` need, only when missing.
# Usage: scripts/install-deps.sh PACKAGE...
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install ${missing[*]} (run as root or install them yourself)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The etcd-server package may start a default single-node etcd; tests run their own.
if pgrep -x etcd >/dev/null 2>&1 && [ -f /etc/default/etcd ] && [ -z "${KEEP_DEFAULT_ETCD:-}" ]; then
  pkill -x etcd || true
fi
