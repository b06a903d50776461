#!/usr/bin/env bash
# Make sure a docker engine answers on this machine.
#
# Fast path: `docker info` works -> exit 0 at once.
# Otherwise (root only): install Debian docker.io (and what the lab needs: debootstrap,
# busybox-static) when missing, start dockerd by hand in the background (this machine has no
# systemd as PID 1) with its log in $LAB_DOCKERD_LOG, and wait until it answers.
# /usr/local/bin/docker may be a client only: the engine comes from /usr/sbin/dockerd.
set -euo pipefail

LOG=${LAB_DOCKERD_LOG:-/var/log/lab-dockerd.log}
WAIT=${LAB_DOCKERD_WAIT:-60}
here=$(cd "$(dirname "$0")" && pwd)

say() { echo "lab: $*" >&2; }
die() { echo "lab: ERROR: $*" >&2; exit 1; }

if docker info >/dev/null 2>&1; then
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "no docker engine answers and starting one needs root (run as root, or start dockerd yourself)"

say "no docker engine answers; installing docker.io if missing"
"$here/../scripts/install-deps.sh" docker.io containerd runc iptables debootstrap busybox-static \
  || die "could not install docker.io/debootstrap/busybox-static with apt (is the Debian mirror reachable?)"

DOCKERD=$(command -v dockerd || true)
[ -n "$DOCKERD" ] || DOCKERD=/usr/sbin/dockerd
[ -x "$DOCKERD" ] || die "dockerd not found after installing docker.io"

# A dockerd of ours may already be starting (pid file present and alive): just wait for it.
if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  say "dockerd (pid $(cat /var/run/docker.pid)) is running but not answering yet; waiting"
else
  rm -f /var/run/docker.pid
  say "starting $DOCKERD in the background (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  # setsid: keep running after make exits; PATH so dockerd finds containerd/runc in /usr/bin,/usr/sbin.
  PATH=/usr/sbin:/usr/bin:/sbin:/bin setsid "$DOCKERD" >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$WAIT"); do
  if docker info >/dev/null 2>&1; then
    say "docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
  fi
  sleep 1
done
tail -n 20 "$LOG" >&2 || true
die "dockerd did not answer within ${WAIT}s; see $LOG (last lines above)"
