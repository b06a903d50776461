"""The subnet file (``/run/flannel/subnet.env``) that docker and mk-docker-opts read.

Written exactly as Go flanneld writes it, atomically (temporary file in the same directory, fsync,
rename) with mode 0644::

    FLANNEL_NETWORK=10.100.0.0/16
    FLANNEL_SUBNET=10.100.42.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from typing import Dict

DEFAULT_PATH = "/run/flannel/subnet.env"


def render(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, mtu: int, ipmasq: bool) -> str:
    """The file's text; FLANNEL_SUBNET is the first address of the lease with its prefix length."""
    first = ipaddress.IPv4Address(int(subnet.network_address) + 1)
    return ("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%s\n"
            % (network, first, subnet.prefixlen, int(mtu), "true" if ipmasq else "false"))


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
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def check_writable(path: str) -> None:
    """Raise OSError with one line naming ``path`` unless :func:`write` can create the file.

    The directory is created like :func:`write` would (``os.makedirs``), then a temporary file is
    created and removed in it, so a read-only file system or missing permission shows at start-up,
    before anything is set up."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OSError("--subnet-file %s is a directory; give a file path such as %s" % (path, DEFAULT_PATH))
    try:
        parent = directory
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise NotADirectoryError(20, "%s is not a directory" % parent)
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError("--subnet-file %s cannot be written: directory %s: %s; create the directory or make it "
                      "writable, or pass another --subnet-file" % (path, directory, reason)) from None


def write(path: str, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, mtu: int,
          ipmasq: bool) -> None:
    write_atomic(path, render(network, subnet, mtu, ipmasq))


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
