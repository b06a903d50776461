#!/bin/sh
# Build an etcd release-style tarball (etcd-v<version>-linux-amd64.tar.gz holding
# etcd-v<version>-linux-amd64/{etcd,etcdctl[,etcdutl]}) from Debian's etcd-server and etcd-client packages, for
# the etcd role's tarball install (etcd_install_method=tarball, etcd_tarball_src=<file>) where GitHub's
# release downloads are out of reach. Idempotent: the .debs and the tarball are cached under lab/.cache/etcd;
# a second run rebuilds nothing. The tarball is reproducible (fixed mtime, owner and order), so its sha256
# (printed, and written to <tarball>.sha256) is the same on every run.
#   lab/build-etcd-tarball.sh [VERSION DEBIAN_REVISION]     default: 3.5.16 4 (Debian trixie)
# Prints the tarball's path on the last line but one and "sha256:<hex>" (etcd_tarball_checksum) on the last.
set -eu
VERSION=${1:-3.5.16}
DEBREV=${2:-4}
ARCH=amd64
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${ETCD_TARBALL_CACHE:-$HERE/.cache/etcd}
NAME=etcd-v$VERSION-linux-$ARCH
OUT=$CACHE/$NAME.tar.gz
mkdir -p "$CACHE"

if [ ! -s "$OUT" ] || [ ! -s "$OUT.sha256" ]; then
    for pkg in etcd-server etcd-client; do
        deb=$CACHE/${pkg}_$VERSION-${DEBREV}_$ARCH.deb
        if [ ! -s "$deb" ]; then
            curl -fsSL --retry 3 -o "$deb.part" "$MIRROR/pool/main/e/etcd/${pkg}_$VERSION-${DEBREV}_$ARCH.deb"
            mv "$deb.part" "$deb"
        fi
    done
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    for pkg in etcd-server etcd-client; do
        dpkg-deb -x "$CACHE/${pkg}_$VERSION-${DEBREV}_$ARCH.deb" "$work/root"
    done
    mkdir "$work/$NAME"
    for bin in etcd etcdctl etcdutl; do
        src=""
        for d in usr/bin usr/sbin; do
            [ -f "$work/root/$d/$bin" ] && src="$work/root/$d/$bin" && break
        done
        if [ -n "$src" ]; then
            install -m 0755 "$src" "$work/$NAME/$bin"
        elif [ "$bin" != etcdutl ]; then
            echo "build-etcd-tarball: no $bin in the $VERSION-$DEBREV packages" >&2
            exit 1
        fi
    done
    "$work/$NAME/etcd" --version | grep -q "etcd Version: $VERSION" || {
        echo "build-etcd-tarball: $NAME/etcd does not say it is $VERSION" >&2; exit 1; }
    tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - "$NAME" \
        | gzip -n -9 > "$OUT.part"
    mv "$OUT.part" "$OUT"
    sha256sum "$OUT" | cut -d' ' -f1 > "$OUT.sha256"
fi
echo "$OUT"
echo "sha256:$(cat "$OUT.sha256")"
