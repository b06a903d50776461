"""Argument handling of the collection's modules, without etcd: everything here is decided before the
store is contacted (the endpoint given is a closed loopback port, so a premature connect would show up as
an "etcd is unreachable" failure instead of the expected message)."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.netfabric.flannel.plugins.doc_fragments.etcd import ModuleDocFragment
from ansible_collections.netfabric.flannel.plugins.module_utils import flannel_module
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import Lease, LeaseAttrs
from ansible_collections.netfabric.flannel.plugins.module_utils.netconfig import parse_config
from ansible_collections.netfabric.flannel.plugins.modules import flannel_lease, flannel_lease_info, flannel_network

CLOSED = ["http://127.0.0.1:9"]


def run_module(module, args, capsys):
    with patch_module_args(dict(args, endpoints=CLOSED, timeout=0.5)), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_wanted_document_stores_only_what_was_given_with_go_names():
    params = {"network": "10.1.0.0/16", "subnet_len": None, "subnet_min": None, "subnet_max": "10.1.9.0",
              "backend": {"type": "vxlan", "vni": 4, "port": None, "mtu": None, "gbp": False, "learning": None,
                          "direct_routing": True, "mac_prefix": None}}
    assert flannel_network.wanted_document(params) == {
        "Network": "10.1.0.0/16", "SubnetMax": "10.1.9.0",
        "Backend": {"Type": "vxlan", "VNI": 4, "GBP": False, "DirectRouting": True}}
    assert flannel_network.wanted_document({"network": "10.1.0.0/16", "backend": None}) == {
        "Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}


@pytest.mark.parametrize("args, line", [
    ({"network": "10.1.0.0/16", "subnet_len": 31}, "invalid network config: SubnetLen=31: must be 30 or less"),
    ({"network": "10.1.0.0/29"}, 'invalid network config: Network="10.1.0.0/29": is too small'),
    ({"network": "10.1.0.0/16", "backend": {"type": "udp", "vni": 3}},
     "invalid network config: Backend.VNI=3: is not an option of the udp backend"),
    ({"network": "10.1.0.0/16", "backend": {"type": "vxlan", "vni": 16777216}},
     "invalid network config: Backend.VNI=16777216: must be between 0 and 16777215"),
    ({"network": "10.1.0.0/16", "subnet_min": "10.1.0.128"},
     'invalid network config: SubnetMin="10.1.0.128": is not on a /24 (SubnetLen) boundary'),
])
def test_network_schema_errors_come_before_etcd(args, line, capsys):
    out = run_module(flannel_network, args, capsys)
    assert out["failed"] is True
    assert out["msg"].startswith(line), out["msg"]
    assert "\n" not in out["msg"]


def test_network_required_and_choices(capsys):
    assert "network" in run_module(flannel_network, {"state": "present"}, capsys)["msg"]
    assert "api" in run_module(flannel_network, {"network": "10.1.0.0/16", "api": "v4"}, capsys)["msg"]
    out = run_module(flannel_network, {"network": "10.1.0.0/16", "client_cert": "/x.pem"}, capsys)
    assert "client_cert" in out["msg"] and "client_key" in out["msg"]


def test_a_valid_config_does_reach_for_etcd(capsys):
    out = run_module(flannel_network, {"network": "10.1.0.0/16"}, capsys)
    assert out["msg"].startswith("etcd is unreachable"), out["msg"]
    assert "http://127.0.0.1:9" in out["msg"]


@pytest.mark.parametrize("args, text", [
    ({"subnet": "10.1.5.1/24", "public_ip": "192.0.2.1"}, "has host bits set; the subnet is 10.1.5.0/24"),
    ({"subnet": "10.1.5.0", "public_ip": "192.0.2.1"}, "needs a prefix length"),
    ({"subnet": "10.1.500.0/24", "public_ip": "192.0.2.1"}, "is not an IPv4 CIDR"),
    ({"subnet": "10.1.5.0/24", "public_ip": "192.0.2.300"}, "is not an IPv4 address"),
    ({"subnet": "10.1.5.0/24"}, "missing: public_ip"),
    ({"state": "absent"}, "subnet, public_ip"),
])
def test_lease_arguments(args, text, capsys):
    out = run_module(flannel_lease, args, capsys)
    assert out["failed"] is True and text in out["msg"], out["msg"]


def test_lease_info_filters(capsys):
    assert "is not an IPv4 address" in run_module(flannel_lease_info, {"public_ip": "x"}, capsys)["msg"]
    assert "is not an IPv4 CIDR" in run_module(flannel_lease_info, {"subnet": "10.0.0.0/40"}, capsys)["msg"]


def lease(subnet, ip):
    return (None, Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ip)))


def test_lease_problems():
    old = parse_config({"Network": "10.1.0.0/16"})
    leases = [lease("10.1.5.0/24", "192.0.2.5"), lease("10.1.200.0/24", "192.0.2.6")]
    assert flannel_network.lease_problems(old, parse_config({"Network": "10.2.0.0/16"}), []) == (None, [])
    why, subnets = flannel_network.lease_problems(old, parse_config({"Network": "10.2.0.0/16"}), leases)
    assert why.startswith("refusing to change Network from 10.1.0.0/16 to 10.2.0.0/16: 2 existing lease(s)")
    assert "force: true" in why and subnets == ["10.1.5.0/24", "10.1.200.0/24"]
    # a wider network keeps every subnet inside, but the SubnetLen change still moves every node
    why, subnets = flannel_network.lease_problems(old, parse_config({"Network": "10.0.0.0/8", "SubnetLen": 24}),
                                                  leases)
    assert why.startswith("refusing to change Network from 10.1.0.0/16 to 10.0.0.0/8")
    why, subnets = flannel_network.lease_problems(old, parse_config({"Network": "10.1.0.0/16",
                                                                     "SubnetMax": "10.1.100.0"}), leases)
    assert "SubnetMin/SubnetMax" in why and subnets == ["10.1.200.0/24"]
    assert flannel_network.lease_problems(old, parse_config({"Network": "10.1.0.0/16", "SubnetMax": "10.1.250.0",
                                                             "Backend": {"Type": "vxlan"}}), leases) == (None, [])


class FailingModule:
    def __init__(self, api):
        self.params = {"api": api}

    def fail_json(self, **kwargs):
        raise RuntimeError(kwargs["msg"])


def test_missing_client_libraries(monkeypatch):
    monkeypatch.setattr(flannel_module, "HAS_ETCD3GW", False)
    assert flannel_module._require_library(FailingModule("auto"), "auto") == "v2"
    with pytest.raises(RuntimeError, match="etcd3gw"):
        flannel_module._require_library(FailingModule("v3"), "v3")
    monkeypatch.setattr(flannel_module, "HAS_PYTHON_ETCD", False)
    with pytest.raises(RuntimeError, match="etcd3gw or python-etcd"):
        flannel_module._require_library(FailingModule("auto"), "auto")
    monkeypatch.setattr(flannel_module, "HAS_ETCD3GW", True)
    assert flannel_module._require_library(FailingModule("auto"), "auto") == "v3"
    with pytest.raises(RuntimeError, match="python-etcd"):
        flannel_module._require_library(FailingModule("v2"), "v2")


def test_doc_fragment_matches_the_argument_spec():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = flannel_module.ETCD_ARGUMENT_SPEC
    assert sorted(doc) == sorted(spec)
    for name, option in spec.items():
        assert doc[name]["type"] == option["type"], name
        assert doc[name].get("default") == option.get("default"), name
        assert doc[name].get("choices") == option.get("choices"), name
    assert spec["password"]["no_log"] is True
