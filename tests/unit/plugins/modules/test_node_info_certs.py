"""flannel_node_info's certs and etcd parts (module_utils/certinfo.py): real certificates made with
``cryptography`` (a CA and a leaf, a bundle, UTCTime and GeneralizedTime expiry), read back by the module's
standard-library DER reader and compared with what ``cryptography`` says; the member status from a real
etcd on loopback (the session's etcd_server)."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.netfabric.flannel.plugins.module_utils import certinfo
from ansible_collections.netfabric.flannel.plugins.modules import flannel_node_info as mod
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)


def _cert(cn: str, days: int, issuer=None, key=None, not_before=NOW):
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netfabric"),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name = issuer.subject if issuer is not None else subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(own.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(not_before)
               .not_valid_after(NOW + datetime.timedelta(days=days)))
    cert = builder.sign(key if key is not None else own, hashes.SHA256())
    return cert, own


def _pem(*certs) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


@pytest.fixture
def pki(tmp_path: Path):
    ca, ca_key = _cert("test CA", 3650)
    leaf, _leaf_key = _cert("node1", 5, issuer=ca, key=ca_key)
    new_ca, _new_key = _cert("test CA 2026-12-06", 9000)  # expiry after 2049: GeneralizedTime
    (tmp_path / "ca.crt").write_text(_pem(ca))
    (tmp_path / "bundle.crt").write_text(_pem(ca, new_ca))
    (tmp_path / "leaf.crt").write_text(_pem(leaf))
    return tmp_path, ca, leaf, new_ca


def test_der_fields_match_cryptography(pki) -> None:
    _path, ca, leaf, _new = pki
    info = certinfo.der_cert_info(leaf.public_bytes(serialization.Encoding.DER), now=NOW)
    assert info["subject"] == "O=netfabric,CN=node1"
    assert info["issuer"] == "O=netfabric,CN=test CA"
    assert int(info["serial"], 16) == leaf.serial_number
    assert info["not_after"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert info["days_left"] == 5
    assert info["self_signed"] is False
    assert info["fingerprint_sha256"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert certinfo.der_cert_info(ca.public_bytes(serialization.Encoding.DER), now=NOW)["self_signed"] is True


def test_generalized_time_and_expired(pki) -> None:
    _path, _ca, _leaf, new_ca = pki
    info = certinfo.der_cert_info(new_ca.public_bytes(serialization.Encoding.DER), now=NOW)
    assert info["not_after"].startswith("2051-")
    expired, _old_key = _cert("old", 1, not_before=NOW - datetime.timedelta(days=30))
    later = NOW + datetime.timedelta(days=3)
    assert certinfo.der_cert_info(expired.public_bytes(serialization.Encoding.DER), now=later)["days_left"] == -2


def test_bundle_gives_every_certificate_and_the_soonest_expiry(pki) -> None:
    path, _ca, _leaf, _new = pki
    out = certinfo.cert_file_info("etcd CA", str(path / "bundle.crt"), 30, now=NOW)
    assert [c["subject"] for c in out["certs"]] == ["O=netfabric,CN=test CA", "O=netfabric,CN=test CA 2026-12-06"]
    assert out["days_left"] == 3650 and out["error"] == "" and out["exists"] is True
    leaf = certinfo.cert_file_info("member", str(path / "leaf.crt"), 30, now=NOW)
    assert leaf["certs"][0]["expiring"] is True
    assert certinfo.cert_file_info("member", str(path / "leaf.crt"), 5, now=NOW)["certs"][0]["expiring"] is False


def test_openssl_agrees_on_the_expiry(pki) -> None:
    path, _ca, _leaf, _new = pki
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(path / "leaf.crt")],
                         capture_output=True, text=True, check=True).stdout.strip()
    ours = certinfo.cert_file_info("member", str(path / "leaf.crt"), 30, now=NOW)["certs"][0]["not_after"]
    theirs = datetime.datetime.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y GMT")
    assert theirs.strftime("%Y-%m-%dT%H:%M:%SZ") == ours


def test_missing_garbage_and_key_files(tmp_path: Path) -> None:
    missing = certinfo.cert_file_info("client", str(tmp_path / "nope.crt"), 30)
    assert missing["exists"] is False and missing["error"] == "" and missing["certs"] == []
    (tmp_path / "junk.crt").write_text("-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n")
    assert "not a PEM certificate file" in certinfo.cert_file_info("client", str(tmp_path / "junk.crt"), 30)["error"]
    (tmp_path / "short.crt").write_text("-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n")
    assert "not a PEM certificate file" in certinfo.cert_file_info("client", str(tmp_path / "short.crt"), 30)["error"]
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "client.key").write_bytes(key)
    out = certinfo.cert_file_info("client", str(tmp_path / "client.key"), 30)
    assert out["error"] == "no CERTIFICATE block" and "PRIVATE" not in json.dumps(out)


def test_member_status_from_a_real_etcd(etcd_server) -> None:
    out = certinfo.etcd_member_status(etcd_server.url)
    assert out["reachable"] is True and out["error"] == ""
    assert out["version"].startswith("3.")
    assert out["db_size"] > 0
    assert out["leader"] is True and out["member_id"] == out["leader_id"]  # a one-member cluster leads itself


def test_member_status_unreachable() -> None:
    from testbed.etcdserver import free_port

    out = certinfo.etcd_member_status("http://127.0.0.1:%d" % free_port(), timeout=2)
    assert out["reachable"] is False and out["error"]
    bad = certinfo.etcd_member_status("https://127.0.0.1:1", ca_cert="/nonexistent/ca.crt", timeout=2)
    assert bad["reachable"] is False and bad["error"]


def test_module_certs_and_etcd(pki, etcd_server, capsys) -> None:
    path, _ca, _leaf, _new = pki
    expired, _gone_key = _cert("gone", -2, not_before=NOW - datetime.timedelta(days=30))
    (path / "expired.crt").write_text(_pem(expired))
    args = {"gather": ["certs", "etcd"], "cert_warn_days": 30, "etcd_endpoint": etcd_server.url,
            "certs": {"etcd CA": str(path / "bundle.crt"), "member": str(path / "leaf.crt"),
                      "client": str(path / "expired.crt")}}
    with patch_module_args(args), pytest.raises(SystemExit):
        mod.main()
    result = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in result["certs"]] == ["etcd CA", "member", "client"]
    assert result["certs"][1]["certs"][0]["expiring"] is True  # 5 days left (from NOW; less by now)
    assert result["etcd"]["leader"] is True
    assert len(result["cert_problems"]) == 1 and "client certificate" in result["cert_problems"][0]
    assert "expired on" in result["cert_problems"][0]
    assert result["problems"] == result["cert_problems"]  # nothing else gathered, nothing else reported
    assert result["changed"] is False
