#!/usr/bin/env bash
# Build the lab's two local images from Debian packages (no registry pulls):
#   $LAB_IMAGE:<hash>, $LAB_IMAGE:latest     Debian bookworm with systemd as PID 1 (debootstrap + docker import)
#   $LAB_BUSYBOX:<hash>, $LAB_BUSYBOX:latest busybox-static workload image (docker import)
# <hash> is a content hash of the build inputs (this script, the package list, suite, mirror), so a second
# build with the same inputs is instant: the image is reused if present, else re-imported from the
# cached rootfs tarball under lab/.cache/, and debootstrap only runs when the inputs changed.
# Downloaded .debs are cached in lab/.cache/debs to make a rebuild with changed inputs faster.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${LAB_CACHE:-$here/.cache}
LAB_IMAGE=${LAB_IMAGE:-netfabric-flannel-lab}
LAB_BUSYBOX=${LAB_BUSYBOX:-netfabric-flannel-busybox}
SUITE=${LAB_SUITE:-bookworm}
MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LAB_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# What every lab host needs before Ansible touches it: systemd as init, python3 for Ansible
# (python3-apt for its apt module), the networking tools the roles and the verify steps use; an OpenSSH server
# that does not start at boot and has no host keys (molecule's prepare gives it keys and starts it: Ansible over
# ssh costs about a third less per task than over `docker exec`).
PACKAGES=${LAB_PACKAGES:-systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,iptables,procps,ca-certificates,sudo,iputils-ping,kmod,less,openssh-server}
# Units that cannot work (or make no sense) in a container: masked so the host boots to "running".
MASK_UNITS="systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
systemd-udev-trigger.service systemd-udev-settle.service getty.target console-getty.service
getty@tty1.service systemd-remount-fs.service systemd-firstboot.service systemd-resolved.service
sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount
dev-hugepages.mount proc-sys-fs-binfmt_misc.automount systemd-binfmt.service
systemd-modules-load.service systemd-journald-audit.socket systemd-machine-id-commit.service
e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer"

say() { echo "lab: $*" >&2; }
die() { echo "lab: ERROR: $*" >&2; exit 1; }
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || die "no docker client; run lab/ensure-docker.sh first"
mkdir -p "$CACHE"

# ---------------------------------------------------------------- systemd host image
IMPORT_CHANGES=('CMD ["/lib/systemd/systemd"]' 'ENV container=docker')

# The rootfs recipe. Its own text (declare -f) is part of the content hash, with the inputs above.
make_rootfs() {
  local rootfs=$1
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" \
    "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || return 1
  # apt inside the hosts: same suites as a normal bookworm install.
  rm -f "$rootfs/etc/apt/sources.list"
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
    "$MIRROR" "$SUITE" "$SUITE" /usr/share/keyrings/debian-archive-keyring.gpg \
    "$SECURITY_MIRROR" "$SUITE" /usr/share/keyrings/debian-archive-keyring.gpg \
    >"$rootfs/etc/apt/sources.list.d/debian.sources"
  for u in $MASK_UNITS; do ln -sf /dev/null "$rootfs/etc/systemd/system/$u"; done
  # sshd: off at boot, and no host keys shared by every container made from this image.
  rm -f "$rootfs/etc/systemd/system/multi-user.target.wants/ssh.service" "$rootfs/etc/systemd/system/sshd.service" \
    "$rootfs"/etc/ssh/ssh_host_*
  # Every container gets its own machine-id at boot; no hostname baked in.
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id" "$rootfs/etc/hostname"
  # No package lists in the image, and an index dated 1970: the first apt run with a cache_valid_time
  # (Ansible's apt module) refreshes it, as on a freshly installed host.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs/tmp/"*
  find "$rootfs/var/lib/apt/lists" -maxdepth 1 -type f -delete
  touch -d @0 "$rootfs/var/lib/apt/lists"
}

hash=$( { declare -f make_rootfs; echo "$SUITE $MIRROR $SECURITY_MIRROR $PACKAGES $MASK_UNITS ${IMPORT_CHANGES[*]}"; } \
        | sha256sum | cut -c1-12)

build_host_image() {
  local tag="$LAB_IMAGE:$hash" tarball="$CACHE/rootfs-$hash.tar"
  if image_exists "$tag"; then
    say "image $tag is up to date (inputs unchanged)"
  else
    if [ ! -s "$tarball" ]; then
      command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap (or run lab/ensure-docker.sh as root)"
      local rootfs="$CACHE/rootfs-$hash.tmp" t0=$SECONDS
      rm -rf "$rootfs"
      mkdir -p "$CACHE/debs"
      say "debootstrap $SUITE (minbase + $PACKAGES) into $rootfs; takes a few minutes, log: $CACHE/debootstrap.log"
      if ! make_rootfs "$rootfs"; then
        tail -n 15 "$CACHE/debootstrap.log" >&2
        rm -rf "$rootfs"
        die "building the rootfs failed (last lines above; full log $CACHE/debootstrap.log)"
      fi
      tar --numeric-owner -C "$rootfs" -cf "$tarball.part" . || die "could not write $tarball"
      mv "$tarball.part" "$tarball"
      rm -rf "$rootfs"
      # Older rootfs tarballs (other inputs) are dead weight now.
      find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$hash.tar" -delete
      say "rootfs cached in $tarball ($(du -h "$tarball" | cut -f1), $((SECONDS - t0))s)"
    else
      say "reusing cached rootfs $tarball"
    fi
    local changes=() c
    for c in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$c"); done
    docker import "${changes[@]}" --message "netfabric.flannel lab host, inputs $hash" "$tarball" "$tag" >/dev/null \
      || die "docker import of $tarball failed"
    say "imported $tag"
  fi
  docker tag "$tag" "$LAB_IMAGE:latest"
}

# ---------------------------------------------------------------- busybox workload image
build_busybox_image() {
  local bb=/bin/busybox
  [ -x "$bb" ] || die "busybox-static missing: apt-get install busybox-static"
  local bbhash
  bbhash=$( { sha256sum <"$bb"; declare -f build_busybox_image; } | sha256sum | cut -c1-12)
  local tag="$LAB_BUSYBOX:$bbhash"
  if image_exists "$tag"; then
    say "image $tag is up to date"
  else
    file "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
      || die "$bb is not statically linked; install busybox-static"
    local root="$CACHE/busybox-$bbhash.tmp"
    rm -rf "$root"
    mkdir -p "$root"/{bin,etc,tmp,www,root}
    cp "$bb" "$root/bin/busybox"
    for applet in $("$bb" --list); do
      [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    echo "netfabric.flannel lab workload" >"$root/www/index.html"
    chmod 1777 "$root/tmp"
    tar --numeric-owner -C "$root" -c . | docker import \
      --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
      --message "netfabric.flannel lab busybox, inputs $bbhash" - "$tag" >/dev/null \
      || die "docker import of the busybox image failed"
    rm -rf "$root"
    say "imported $tag"
  fi
  docker tag "$tag" "$LAB_BUSYBOX:latest"
}

case "${1:-all}" in
  host) build_host_image ;;
  busybox) build_busybox_image ;;
  all) build_host_image; build_busybox_image ;;
  *) die "usage: $0 [all|host|busybox]" ;;
esac
