"""The wireguard backend's private key: its key file, and which node may use a key.

The private key lives in a key file (``--wireguard-key-file``, else ``$WIREGUARD_KEY_FILE``, else
``/run/flannel/wgkey``): base64 of 32 bytes on one line, mode 0400, made when missing.  A new key is
written to a temporary file (exclusive create) and linked into place, so a half-written key file is never
seen and a key another process just made is not overwritten; a replaced key is renamed over the old one.
The private key never goes into a log line, and to ``wg`` only on a pipe (see :mod:`.wgtool`).

A key is one node's: :func:`key_clash` finds an older lease of another node that publishes our public key
(a copied key file, e.g. a cloned VM image).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from typing import Any, Dict, Iterable, Optional, Tuple

from pyflannel import catalogue
from pyflannel.backend import BackendError
from pyflannel.leases import Lease
from pyflannel.subnetenv import sync_dir

log = logging.getLogger("pyflannel.backend.wireguard")

DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"


def key_file_path(settings: Optional[Dict[str, Any]] = None, environ: Optional[Dict[str, str]] = None) -> str:
    """``--wireguard-key-file``, else ``$WIREGUARD_KEY_FILE`` (Go flanneld's name), else the default."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    return (settings or {}).get("wireguard_key_file") or environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE


def generate_private_key() -> str:
    """32 random bytes clamped as an X25519 private key (what ``wg genkey`` does), in base64."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return base64.b64encode(bytes(raw)).decode("ascii")


def _bad_key(path: str, problem: str) -> BackendError:
    return BackendError("wireguard private key file %s %s; delete it (a new key is made at the next start) or put "
                        "a key made by `wg genkey` in it" % (path, problem))


def read_key_file(path: str) -> str:
    """The base64 private key in ``path`` (one line; a trailing newline is fine)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except IsADirectoryError:
        raise _bad_key(path, "is a directory") from None
    except OSError as err:
        raise BackendError("cannot read the wireguard private key file %s: %s" % (path, err.strerror or err)) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _bad_key(path, "is not text (a base64 key on one line)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise _bad_key(path, "is empty" if not lines else "holds %d lines, not one key" % len(lines))
    key = lines[0].strip()
    problem = catalogue.key_problem(key)
    if problem:
        raise _bad_key(path, "holds no usable key: it " + problem.replace("wg genpsk", "wg genkey"))
    return key


def load_or_create_key(path: str) -> Tuple[str, bool]:
    """(private key, created): read ``path``, or write a fresh key there (mode 0400) when it is missing.

    The new key is written to a temporary file and linked into place, so a half-written key file is
    never seen and a key another process just made is not overwritten."""
    if os.path.lexists(path):
        key = read_key_file(path)
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warning("wireguard private key file %s had mode %04o: setting 0400", path, mode)
            os.chmod(path, 0o400)
        return key, False
    key = generate_private_key()
    try:
        if not _write_key_file(path, key, replace=False):
            return read_key_file(path), False
    except OSError as err:
        raise BackendError("cannot create the wireguard private key file %s: %s; fix the directory or point "
                           "--wireguard-key-file elsewhere" % (path, err.strerror or err)) from None
    return key, True


def replace_key(path: str) -> str:
    """Write a fresh private key over the key file ``path`` (mode 0400) and return it; raises OSError.

    Atomic: the key goes to a temporary file (exclusive create) that is renamed over ``path``, so the
    file holds the old key or the new one, never a part of either."""
    key = generate_private_key()
    _write_key_file(path, key, replace=True)
    return key


def _write_key_file(path: str, key: str, replace: bool) -> bool:
    """Put ``key`` in ``path`` through a temporary file in the same directory: linked into place (False when
    ``path`` appeared meanwhile: nothing written) or, ``replace``, renamed over it.  Raises OSError."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, 0o755, exist_ok=True)
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crashed run that had our pid: no live process uses this name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        try:
            os.write(fd, (key + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
            sync_dir(directory)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        sync_dir(directory)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- who may use a key ----------------------------------------------------------------------------
def lease_keys(lease: Lease) -> Tuple[str, ...]:
    """The wireguard public keys a lease publishes (BackendData's and BackendV6Data's; usually one)."""
    if lease.attrs.backend_type != "wireguard":
        return ()
    keys = (lease.attrs.data("PublicKey", 4), lease.attrs.data("PublicKey", 6))
    return tuple(dict.fromkeys(k for k in keys if isinstance(k, str) and k))


def _age(lease: Lease) -> Tuple[int, str]:
    """Older first, as the lease validator judges two leases sharing a key: etcd's create revision, then
    the key name."""
    return (lease.created or 0, lease.key_name)


def key_clash(public: str, address: Optional[str], leases: Iterable[Optional[Lease]],
              claim_now: bool) -> Optional[Lease]:
    """The lease of another node (another address than ``address``) that holds the public key ``public``
    by an older claim than ours, or None.

    Our claim is our oldest lease (a lease with our address) that carries the key: a restart with our
    own lease is no clash, and a younger lease with the key is the other node's problem (every
    validator refuses it).  Without such a lease, ``claim_now`` (at start, before our lease is written)
    means we would claim the key now, so every other node's lease with it is older; otherwise (while
    running, our lease not at hand) nothing can be judged: None."""
    holders = [lease for lease in leases if lease is not None and public in lease_keys(lease)]
    ours = [_age(lease) for lease in holders if lease.attrs.address == address]
    others = sorted((lease for lease in holders if lease.attrs.address != address), key=_age)
    if not others:
        return None
    if ours:
        return others[0] if _age(others[0]) < min(ours) else None
    return others[0] if claim_now else None
