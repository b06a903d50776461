"""flannel_migrate without etcd: config comparison, what the diff and the refusal line show, argument handling."""

from __future__ import annotations

import importlib
import json

import pytest
from ansible.module_utils.testing import patch_module_args

CONFIG = '{"Network": "10.100.0.0/16", "SubnetLen": 25, "Backend": {"Type": "vxlan"}}'
PSK_A = "9bPBmNQn4XDWyH7sDQR7RJkSAXvlZxBNFV+6rP1jvW0="
PSK_B = "Q2mE0Xw0m5t0vUu7vU8a3l4d9pWcJmXH2F0d0Yk7d7A="


@pytest.fixture(scope="module")
def fm():
    """The module, imported once the checkout is importable as ansible_collections.netfabric.flannel."""
    importlib.import_module("tests.unit.plugins.conftest")
    return importlib.import_module("ansible_collections.netfabric.flannel.plugins.modules.flannel_migrate")


def run_module(fm, args, capsys):
    with patch_module_args(dict(args, endpoints=args.get("endpoints", ["http://127.0.0.1:9"]), timeout=0.5)), \
            pytest.raises(SystemExit):
        fm.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("other, same", [
    (CONFIG, True),
    ('{"Backend": {"Type": "vxlan"}, "SubnetLen": 25, "Network": "10.100.0.0/16"}', True),  # key order
    ('{"network": "10.100.0.0/16", "subnetlen": 25, "backend": {"type": "vxlan", "VNI": 1}}', True),  # meaning
    ('{"Network": "10.100.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}', False),
    ('{"Network": "10.100.0.0/16", "SubnetLen": 25}', False),  # no Backend.Type: udp
    ("not json", False),
])
def test_same_config(fm, other, same):
    assert fm.same_config(CONFIG, other) is same


def test_difference_names_keys_and_hides_secrets(fm):
    # SubnetLen, and the defaults that follow from it
    assert fm.config_difference(CONFIG, CONFIG.replace("25", "24")).startswith("SubnetLen 25 -> 24, SubnetMin ")
    a = json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "PSK": PSK_A}})
    b = json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "PSK": PSK_B}})
    text = fm.config_difference(a, b)
    assert text == "Backend.PSK (hidden) -> (hidden)"
    assert fm.config_difference("{}", CONFIG) == "v3's is not a valid network config"


def test_diff_lines_hide_secrets_and_keep_other_values_byte_for_byte(fm):
    lease = '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:87"}}'
    assert fm.line("/k/subnets/10.1.2.0-24", lease, 300) == "/k/subnets/10.1.2.0-24 = %s  (TTL 300 s)\n" % lease
    assert fm.line("/k/config", CONFIG, None) == "/k/config = %s\n" % CONFIG
    secret = json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard", "PSK": PSK_A}})
    shown = fm.line("/k/config", secret, None)
    assert PSK_A not in shown and '"PSK": "(hidden)"' in shown
    assert PSK_A not in fm.redact_text('{"Backend": {"PSK": "%s"' % PSK_A)  # not JSON, names the secret option


def test_arguments(fm, capsys):
    out = run_module(fm, {"api": "v2"}, capsys)
    assert out["failed"] and "api" in out["msg"] and "v3" in out["msg"]
    out = run_module(fm, {"state": "moved"}, capsys)
    assert out["failed"] and "copied, v2_removed" in out["msg"]
    out = run_module(fm, {"endpoints": []}, capsys)
    assert out["failed"] and out["msg"].startswith("endpoints is empty")
    out = run_module(fm, {"client_cert": "/x.crt"}, capsys)
    assert out["failed"] and "client_key" in out["msg"]
    # a member that does not answer stops the run before anything is read
    out = run_module(fm, {}, capsys)
    assert out["failed"] and out["msg"].startswith("etcd at http://127.0.0.1:9 does not answer")
    assert "every member must be up for the migration" in out["msg"]
