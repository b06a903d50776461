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
# On a machine without systemd, the etcd-server package starts its default single-node etcd through
# its init script; tests and the lab run their own etcd, so stop that one service (and only it).
if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -x /etc/init.d/etcd ] && [ -z "${KEEP_DEFAULT_ETCD:-}" ]; then
  /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi
