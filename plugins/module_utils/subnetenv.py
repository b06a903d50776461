# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The subnet file (``/run/flannel/subnet.env``) that docker and mk-docker-opts read.

Shared verbatim by the Ansible modules (module_utils: ``flannel_node_info`` parses the file with it) and the
pyflannel agent (``pyflannel/subnetenv.py`` is a symlink to this file).  Standard library only.

Written exactly as Go flanneld writes it, atomically (temporary file in the same directory, fsync,
rename) with mode 0644::

    FLANNEL_NETWORK=10.100.0.0/16
    FLANNEL_SUBNET=10.100.42.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

With an IPv6 network (Go flanneld v0.20 ``WriteSubnetFile``) FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET
follow the IPv4 lines, before FLANNEL_MTU; with IPv4 off (an IPv6-only network) the FLANNEL_NETWORK and
FLANNEL_SUBNET lines are left out::

    FLANNEL_NETWORK=10.100.0.0/16
    FLANNEL_SUBNET=10.100.42.1/24
    FLANNEL_IPV6_NETWORK=fc00::/48
    FLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false
"""

from __future__ import annotations

import errno
import ipaddress
import os
import tempfile
from typing import Dict, Optional, Tuple

DEFAULT_PATH = "/run/flannel/subnet.env"


def _family(network, subnet, cls, label: str) -> bool:
    """True when the family is on (both given), False when off (neither); ValueError otherwise."""
    if network is None and subnet is None:
        return False
    if network is None or subnet is None:
        raise ValueError("subnet.env: %s network and subnet go together (got network=%s, subnet=%s)"
                         % (label, network, subnet))
    for value in (network, subnet):
        if not isinstance(value, cls):
            raise ValueError("subnet.env: %s expected, got %r" % (cls.__name__, value))
    return True


def render(network: Optional[ipaddress.IPv4Network], subnet: Optional[ipaddress.IPv4Network], mtu: int,
           ipmasq: bool, *, ipv6_network: Optional[ipaddress.IPv6Network] = None,
           ipv6_subnet: Optional[ipaddress.IPv6Network] = None) -> str:
    """The file's text; FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET are the first address of the lease with its
    prefix length (IPv6 in compressed lower-case text, e.g. ``fc00:0:0:3::1/64``).

    A family is written when its network and subnet are both given and left out when both are None
    (IPv4 off: an IPv6-only network); one without the other, or no family at all, is a ValueError."""
    ipv4 = _family(network, subnet, ipaddress.IPv4Network, "IPv4")
    ipv6 = _family(ipv6_network, ipv6_subnet, ipaddress.IPv6Network, "IPv6")
    if not ipv4 and not ipv6:
        raise ValueError("subnet.env needs an IPv4 or an IPv6 network and subnet (got neither)")
    text = ""
    if ipv4:
        first = ipaddress.IPv4Address(int(subnet.network_address) + 1)
        text += "FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\n" % (network, first, subnet.prefixlen)
    if ipv6:
        first6 = ipaddress.IPv6Address(int(ipv6_subnet.network_address) + 1)
        text += "FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/%d\n" % (ipv6_network, first6,
                                                                          ipv6_subnet.prefixlen)
    return text + "FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%s\n" % (int(mtu), "true" if ipmasq else "false")


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old or the new file, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    sync_dir(directory)


def sync_dir(directory: str) -> None:
    """fsync a directory, so a file renamed or linked into it survives a crash (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# bytes check_writable writes: the file is ~150 bytes, but a rewrite needs a block for the temporary
# copy while the old file still holds its own; a few KiB proves a real write, not just a directory entry
PROBE_BYTES = 8192


def check_writable(path: str) -> None:
    """Raise OSError with one line naming ``path`` unless :func:`write` can write the file.

    The directory is created like :func:`write` would (``os.makedirs``), then a temporary file of
    :data:`PROBE_BYTES` real bytes is written, fsync'ed and removed in it, so a read-only file system,
    a missing permission or a full disk shows at start-up, before anything is set up."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OSError("--subnet-file %s is a directory; give a file path such as %s" % (path, DEFAULT_PATH))
    tmp = None
    try:
        parent = directory
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise NotADirectoryError(errno.ENOTDIR, "%s is not a directory" % parent)
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "free some space there (or raise the quota), or pass another --subnet-file"
        elif err.errno == errno.EROFS:
            hint = "the file system is read-only; pass a --subnet-file on a writable one (e.g. %s)" % DEFAULT_PATH
        else:
            hint = "create the directory or make it writable, or pass another --subnet-file"
        raise OSError("--subnet-file %s cannot be written: directory %s: %s; %s" % (path, directory, reason, hint)) \
            from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write(path: str, network: Optional[ipaddress.IPv4Network], subnet: Optional[ipaddress.IPv4Network], mtu: int,
          ipmasq: bool, *, ipv6_network: Optional[ipaddress.IPv6Network] = None,
          ipv6_subnet: Optional[ipaddress.IPv6Network] = None) -> None:
    """:func:`render` written with :func:`write_atomic` (the ValueError comes before the file is touched)."""
    write_atomic(path, render(network, subnet, mtu, ipmasq, ipv6_network=ipv6_network, ipv6_subnet=ipv6_subnet))


def parse(text: str) -> Dict[str, str]:
    """``NAME=value`` lines (optional quotes, ``export``, comments) -> dict."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        name, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def read(path: str) -> Dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read())


def _interface_network(value: Optional[str], cls):
    """``10.1.2.1/24`` -> IPv4Network 10.1.2.0/24 (``cls`` IPv4Interface or IPv6Interface); None if not one."""
    if not value or "/" not in value:
        return None
    try:
        return cls(value.strip()).network
    except ValueError:
        return None


def previous_subnets(
        path: Optional[str]) -> Tuple[Optional[ipaddress.IPv4Network], Optional[ipaddress.IPv6Network]]:
    """The subnets of FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET in an existing subnet file, for reusing the
    leases on restart. A missing or unreadable file gives ``(None, None)``; a missing or bad line (no
    prefix length, the wrong family, garbage) gives None for its family only. Quotes, ``export`` and
    comments are accepted as by :func:`parse`."""
    if not path:
        return None, None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            env = parse(handle.read())
    except (OSError, ValueError):
        return None, None
    return (_interface_network(env.get("FLANNEL_SUBNET"), ipaddress.IPv4Interface),
            _interface_network(env.get("FLANNEL_IPV6_SUBNET"), ipaddress.IPv6Interface))
