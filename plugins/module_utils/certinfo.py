# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node's certificates and its etcd member say, for flannel_node_info (gather: certs, etcd).

Certificates: the PEM files are read with the standard library only (the node's Python may have no
``cryptography``): each CERTIFICATE block of a file (a trust bundle holds several) is decoded and the
few DER fields shown are read - serial, issuer, validity, subject. Private keys are never opened.

etcd: the member's own status, from the v3 JSON gateway (``POST /v3/maintenance/status``, what
``etcdctl endpoint status`` asks), over TLS with the member's certificate when it has one (Ansible's
``open_url``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import re
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.urls import open_url

__all__ = ["cert_file_info", "der_cert_info", "etcd_member_status", "pem_blocks"]

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)
_NAMES = {"2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU"}


def pem_blocks(text: str) -> List[bytes]:
    """The DER bytes of every CERTIFICATE block in ``text`` (a bundle gives several)."""
    out = []
    for body in _PEM.findall(text):
        try:
            out.append(base64.b64decode("".join(body.split()), validate=True))
        except (binascii.Error, ValueError) as err:
            raise ValueError("a CERTIFICATE block is not base64: %s" % err) from err
    return out


def _tlv(data: bytes, pos: int) -> Tuple[int, bytes, int]:
    """(tag, contents, position after) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:pos + length], pos + length


def _children(data: bytes) -> List[Tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        tag, body, pos = _tlv(data, pos)
        out.append((tag, body))
    return out


def _oid(body: bytes) -> str:
    parts = [body[0] // 40, body[0] % 40] if body else []
    value = 0
    for byte in body[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _string(tag: int, body: bytes) -> str:
    if tag == 0x1E:  # BMPString
        return body.decode("utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace")


def _name(body: bytes) -> str:
    """An X.509 Name as ``CN=...,O=...`` (only the usual attribute types, others as dotted OIDs)."""
    parts = []
    for _set_tag, rdn in _children(body):
        for _seq_tag, attr in _children(rdn):
            items = _children(attr)
            if len(items) == 2:
                oid = _oid(items[0][1])
                parts.append("%s=%s" % (_NAMES.get(oid, oid), _string(*items[1])))
    return ",".join(parts)


def _time(tag: int, body: bytes) -> datetime.datetime:
    text = body.decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    return datetime.datetime.strptime(text.rstrip("Z"), "%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc)


def der_cert_info(der: bytes, now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    """subject, issuer, serial (hex), not_before/not_after (ISO 8601, UTC), days_left (whole days, negative
    once expired), self_signed (issuer == subject) and the SHA-256 fingerprint of one DER certificate."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    _tag, cert, _end = _tlv(der, 0)
    _tag, tbs, _end = _tlv(cert, 0)
    fields = _children(tbs)
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("not an X.509 certificate")
    serial, _alg, issuer, validity, subject = fields[0][1], fields[1], fields[2][1], fields[3][1], fields[4][1]
    (nb_tag, nb), (na_tag, na) = _children(validity)[:2]
    not_before, not_after = _time(nb_tag, nb), _time(na_tag, na)
    return {
        "subject": _name(subject),
        "issuer": _name(issuer),
        "serial": serial.hex(),
        "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": int((not_after - now).total_seconds() // 86400),
        "self_signed": _name(subject) == _name(issuer),
        "fingerprint_sha256": hashlib.sha256(der).hexdigest(),
    }


def cert_file_info(name: str, path: str, warn_days: int,
                   now: Optional[datetime.datetime] = None) -> Dict[str, Any]:
    """One certificate file: exists, error (empty when readable), certs (one entry per block, see
    der_cert_info, each with ``expiring``: within ``warn_days``) and days_left (the soonest of them)."""
    out: Dict[str, Any] = {"name": name, "path": path, "exists": False, "error": "", "certs": [], "days_left": None}
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        return out
    except OSError as err:
        out.update(exists=True, error="cannot read: %s" % err.strerror)
        return out
    out["exists"] = True
    try:
        blocks = pem_blocks(text)
        certs = [der_cert_info(der, now) for der in blocks]
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        out["error"] = "not a PEM certificate file: %s" % err
        return out
    if not certs:
        out["error"] = "no CERTIFICATE block"
        return out
    for cert in certs:
        cert["expiring"] = cert["days_left"] < warn_days
    out["certs"] = certs
    out["days_left"] = min(c["days_left"] for c in certs)
    return out


def etcd_member_status(url: str, ca_cert: Optional[str] = None, client_cert: Optional[str] = None,
                       client_key: Optional[str] = None, timeout: float = 5.0) -> Dict[str, Any]:
    """The member's version, DB size (bytes), id and whether it is the leader; ``error`` when not readable."""
    out: Dict[str, Any] = {"reachable": False, "version": None, "db_size": None, "db_size_in_use": None,
                           "member_id": None, "leader_id": None, "leader": None, "error": ""}
    try:
        response = open_url(url.rstrip("/") + "/v3/maintenance/status", data=b"{}", method="POST",
                            headers={"Content-Type": "application/json"}, timeout=timeout,
                            ca_path=ca_cert or None, client_cert=client_cert or None, client_key=client_key or None)
        data = json.loads(response.read().decode("utf-8"))
    except Exception as err:  # pylint: disable=broad-except  # URL, TLS and JSON errors alike: shown, not raised
        out["error"] = str(getattr(err, "reason", err)) or type(err).__name__
        return out
    member = int(data.get("header", {}).get("member_id", 0))
    leader = int(data.get("leader", 0))
    out.update(reachable=True, version=data.get("version"), db_size=int(data.get("dbSize", 0)),
               db_size_in_use=int(data["dbSizeInUse"]) if "dbSizeInUse" in data else None,
               member_id="%x" % member, leader_id="%x" % leader, leader=member != 0 and member == leader)
    return out
