#!/usr/bin/env bash
# Build a Debian bookworm Vagrant box for the libvirt provider offline, from Debian packages only,
# and add it to vagrant as $BOX_NAME (default netfabric/bookworm-lab). Used by molecule/vagrant.
#
#   debootstrap (kernel, openssh-server, sudo, python3, systemd-networkd DHCP) -> ext4 root with
#   extlinux -> raw disk with an MBR -> qcow2 -> .box (metadata.json + a Vagrantfile carrying the
#   box's own ssh key, generated here) -> `vagrant box add`.
# Cached like the lab image: lab/.cache/vagrant-<hash>.box is reused while the inputs are unchanged.
# Also starts virtlogd/libvirtd by hand when they are not running (no systemd on this machine).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${LAB_CACHE:-$here/.cache}
BOX_NAME=${BOX_NAME:-netfabric/bookworm-lab}
SUITE=${LAB_SUITE:-bookworm}
MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
DISK_GB=${BOX_DISK_GB:-4}
PACKAGES=linux-image-amd64,openssh-server,sudo,systemd-sysv,dbus,python3,python3-apt,iproute2,iptables,procps,ca-certificates,iputils-ping,kmod,less,initramfs-tools
HOST_DEBS="vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils extlinux syslinux-common fdisk debootstrap dnsmasq-base openssh-client"

say() { echo "lab: $*" >&2; }
die() { echo "lab: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "building the box needs root (debootstrap, loop mount)"
# shellcheck disable=SC2086  # HOST_DEBS is a list of package names
"$here/../scripts/install-deps.sh" $HOST_DEBS || die "could not install $HOST_DEBS"

start_libvirt() {
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 1 30); do virsh -c qemu:///system version >/dev/null 2>&1 && return 0; sleep 1; done
  die "libvirtd does not answer on qemu:///system"
}

make_box() {
  local work=$1 rootfs=$1/rootfs mnt=$1/mnt
  mkdir -p "$rootfs" "$mnt" "$CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" \
    "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap-box.log" 2>&1 || return 1
  echo "/dev/vda1 / ext4 errors=remount-ro 0 1" >"$rootfs/etc/fstab"
  echo "lab-vm" >"$rootfs/etc/hostname"
  # The DHCP client id follows the MAC: VMs from one box must never share a lease.
  printf '[Match]\nName=e*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nClientIdentifier=mac\n' \
    >"$rootfs/etc/systemd/network/50-dhcp.network"
  chroot "$rootfs" systemctl enable systemd-networkd ssh >/dev/null 2>&1
  chroot "$rootfs" useradd -m -s /bin/bash vagrant
  echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$rootfs/etc/sudoers.d/vagrant"
  chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
  ssh-keygen -q -t ed25519 -N '' -C "netfabric lab box" -f "$work/vagrant_key"
  install -d -m 0700 -o 1000 -g 1000 "$rootfs/home/vagrant/.ssh"
  install -m 0600 -o 1000 -g 1000 "$work/vagrant_key.pub" "$rootfs/home/vagrant/.ssh/authorized_keys"
  printf 'UseDNS no\n' >"$rootfs/etc/ssh/sshd_config.d/vagrant.conf"
  # Host keys are made at first boot, per VM.
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  printf '[Unit]\nBefore=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n[Install]\nWantedBy=multi-user.target\n' \
    >"$rootfs/etc/systemd/system/ssh-hostkeys.service"
  chroot "$rootfs" systemctl enable ssh-hostkeys >/dev/null 2>&1
  # Every VM gets its own machine-id at first boot. dbus's copy goes too: systemd would take an empty
  # /etc/machine-id's value from it, and all VMs would share one id (and one DHCP DUID).
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/var/lib/dbus/machine-id"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  local kernel initrd
  kernel=$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort | head -n1)
  initrd=$(find "$rootfs/boot" -maxdepth 1 -name 'initrd.img-*' -printf '%f\n' | sort | head -n1)
  if [ -z "$kernel" ] || [ -z "$initrd" ]; then echo "no kernel/initrd in the rootfs" >&2; return 1; fi
  mkdir -p "$rootfs/boot/extlinux"
  printf 'DEFAULT linux\nTIMEOUT 1\nLABEL linux\n  LINUX /boot/%s\n  INITRD /boot/%s\n  APPEND root=/dev/vda1 rw console=ttyS0 net.ifnames=0\n' \
    "$kernel" "$initrd" >"$rootfs/boot/extlinux/extlinux.conf"
  # Root partition image (1 MiB into the disk), populated without mounting, then extlinux on it.
  local part=$work/part.img
  mkfs.ext4 -q -L root -d "$rootfs" "$part" "$((DISK_GB * 1024 - 1))M" || return 1
  mount -o loop "$part" "$mnt" || return 1
  extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1 || { umount "$mnt"; return 1; }
  umount "$mnt"
  local disk=$work/disk.raw
  truncate -s "${DISK_GB}G" "$disk"
  echo 'start=2048, type=83, bootable' | sfdisk -q "$disk" || return 1
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none
  dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f "$part"
  mkdir -p "$work/box"
  qemu-img convert -O qcow2 "$disk" "$work/box/box.img" || return 1
  rm -f "$disk"
  printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$DISK_GB" >"$work/box/metadata.json"
  cp "$work/vagrant_key" "$work/box/vagrant_key"
  cat >"$work/box/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.ssh.username = "vagrant"
  config.ssh.private_key_path = File.expand_path("vagrant_key", __dir__)
  config.ssh.insert_key = false
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
}

hash=$( { declare -f make_box; echo "$SUITE $MIRROR $DISK_GB $PACKAGES"; } | sha256sum | cut -c1-12)
box=$CACHE/vagrant-$hash.box
if [ ! -s "$box" ]; then
  work=$CACHE/vagrant-$hash.tmp
  rm -rf "$work"; mkdir -p "$work"
  say "building the Vagrant box (debootstrap with a kernel; a few minutes; log $CACHE/debootstrap-box.log)"
  t0=$SECONDS
  if ! make_box "$work"; then
    tail -n 15 "$CACHE/debootstrap-box.log" >&2 || true
    die "building the box failed (see above)"
  fi
  tar -C "$work/box" -czf "$box.part" metadata.json Vagrantfile box.img vagrant_key
  mv "$box.part" "$box"
  rm -rf "$work"
  say "box cached in $box ($(du -h "$box" | cut -f1), $((SECONDS - t0))s)"
fi
start_libvirt
if vagrant box list 2>/dev/null | grep -q "^$BOX_NAME .*libvirt" && [ -f "$CACHE/vagrant-box-added" ] \
   && [ "$(cat "$CACHE/vagrant-box-added")" = "$hash" ]; then
  say "vagrant box $BOX_NAME is up to date"
else
  vagrant box add --force --name "$BOX_NAME" "$box" >/dev/null || die "vagrant box add failed"
  echo "$hash" >"$CACHE/vagrant-box-added"
  say "vagrant box $BOX_NAME added"
fi
