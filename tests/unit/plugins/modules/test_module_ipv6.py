"""IPv6 in the modules' arguments, without etcd: option mapping, documentation against the argument spec, and
every refusal that is decided before the store is contacted (the endpoint is a closed loopback port, so a
premature connect would show up as "etcd is unreachable" instead of the expected line)."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from ansible_collections.netfabric.flannel.plugins.module_utils import flannel_module
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import Lease, LeaseAttrs
from ansible_collections.netfabric.flannel.plugins.module_utils.netconfig import parse_config
from ansible_collections.netfabric.flannel.plugins.modules import flannel_lease, flannel_lease_info, flannel_network

CLOSED = ["http://127.0.0.1:9"]
N = ipaddress.ip_network
DUAL = {"network": "10.1.0.0/16", "enable_ipv6": True, "ipv6_network": "fc00::/48", "backend": {"type": "vxlan"}}


def run_module(module, args, capsys):
    with patch_module_args(dict(args, endpoints=CLOSED, timeout=0.5)), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def argument_spec(module, monkeypatch) -> dict:
    """The argument spec a module's main() builds (AnsibleModule is stopped right there)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(module, "AnsibleModule", fake)
    with pytest.raises(Stop):
        module.main()
    return seen["argument_spec"]


@pytest.mark.parametrize("module", [flannel_network, flannel_lease, flannel_lease_info])
def test_documentation_matches_the_argument_spec(module, monkeypatch):
    spec = argument_spec(module, monkeypatch)
    doc = yaml.safe_load(module.DOCUMENTATION)["options"]
    own = {name: opt for name, opt in spec.items() if name not in flannel_module.ETCD_ARGUMENT_SPEC}
    assert sorted(doc) == sorted(own)
    for name, option in own.items():
        assert doc[name]["type"] == option["type"], name
        assert doc[name].get("default") == option.get("default"), name
        assert doc[name].get("choices") == option.get("choices"), name
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)


def test_network_ipv6_options_in_the_spec(monkeypatch):
    spec = argument_spec(flannel_network, monkeypatch)
    assert spec["enable_ipv4"] == {"type": "bool", "default": True}
    assert spec["enable_ipv6"] == {"type": "bool", "default": False}
    for name in ("ipv6_network", "ipv6_subnet_min", "ipv6_subnet_max"):
        assert spec[name] == {"type": "str"}, name
    assert spec["ipv6_subnet_len"] == {"type": "int"}
    returned = yaml.safe_load(flannel_network.RETURN)
    assert "IPv6Network" in " ".join(returned["config"]["description"])


def params(**given):
    out = {"network": None, "subnet_len": None, "subnet_min": None, "subnet_max": None, "enable_ipv4": True,
           "enable_ipv6": False, "ipv6_network": None, "ipv6_subnet_len": None, "ipv6_subnet_min": None,
           "ipv6_subnet_max": None, "backend": None}
    out.update(given)
    return out


def test_wanted_document_maps_the_ipv6_options_to_go_keys():
    # an IPv4-only document is what it was before IPv6: no Enable* keys
    assert flannel_network.wanted_document(params(network="10.1.0.0/16")) == {
        "Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}
    doc = flannel_network.wanted_document(params(
        network="10.1.0.0/16", enable_ipv6=True, ipv6_network="fc00::/48", ipv6_subnet_len=80,
        ipv6_subnet_min="fc00:0:0:0:1::", ipv6_subnet_max="fc00:0:0:ffff:ffff::", backend={"type": "vxlan"}))
    assert doc == {"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 80,
                   "IPv6SubnetMin": "fc00:0:0:0:1::", "IPv6SubnetMax": "fc00:0:0:ffff:ffff::",
                   "Backend": {"Type": "vxlan"}}
    assert parse_config(doc).pool6.subnet_len == 80
    doc = flannel_network.wanted_document(params(enable_ipv4=False, enable_ipv6=True, ipv6_network="fc00::/48",
                                                 backend={"type": "host-gw"}))
    assert doc == {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48",
                   "Backend": {"Type": "host-gw"}}
    config = parse_config(doc)
    assert config.pool4 is None and str(config.pool6.subnet_min) == "fc00:0:0:1::"


def test_an_ipv4_only_config_of_today_compares_unchanged():
    today = parse_config('{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}')
    wanted = parse_config(flannel_network.wanted_document(params(network="10.1.0.0/16", backend={"type": "vxlan"})))
    assert wanted == today and "EnableIPv4" not in wanted.to_dict()
    # Go's own spelling of the defaults means the same too
    assert parse_config({"Network": "10.1.0.0/16", "EnableIPv4": True, "EnableIPv6": False,
                         "Backend": {"Type": "vxlan"}}) == today


@pytest.mark.parametrize("args, line", [
    (dict(DUAL, ipv6_network=None), "invalid network config: IPv6Network is missing; EnableIPv6 needs"),
    (dict(DUAL, ipv6_subnet_len=127), "invalid network config: IPv6SubnetLen=127: must be 126 or less"),
    (dict(DUAL, ipv6_subnet_len=48), "invalid network config: IPv6SubnetLen=48: must be at least the IPv6Network"),
    (dict(DUAL, ipv6_network="fc00::/125"), 'invalid network config: IPv6Network="fc00::/125": is too small'),
    (dict(DUAL, ipv6_network="10.2.0.0/16"), 'invalid network config: IPv6Network="10.2.0.0/16": is not an IPv6 CIDR'),
    (dict(DUAL, ipv6_network="fc00::"), 'invalid network config: IPv6Network="fc00::": needs a prefix length'),
    (dict(DUAL, ipv6_subnet_min="fc00::8"),
     'invalid network config: IPv6SubnetMin="fc00::8": is not on a /64 (IPv6SubnetLen) boundary'),
    (dict(DUAL, ipv6_subnet_max="fc01::"), 'invalid network config: IPv6SubnetMax="fc01::": is outside IPv6Network'),
    (dict(DUAL, ipv6_subnet_min="10.1.1.0"), 'invalid network config: IPv6SubnetMin="10.1.1.0": is not an IPv6'),
    (dict(DUAL, backend={"type": "udp"}), "invalid network config: EnableIPv6=true: the udp backend carries IPv4 only"),
    ({"enable_ipv4": False, "ipv6_network": "fc00::/48"},
     "invalid network config: EnableIPv4=false: a network needs IPv4 or IPv6"),
    ({"enable_ipv4": False, "enable_ipv6": True, "ipv6_network": "fc00::/48"},
     "invalid network config: EnableIPv6=true: the udp backend carries IPv4 only"),
    ({"subnet_len": 24}, "invalid network config: Network is missing"),
    ({"network": "10.1.0.0/16", "ipv6_network": "fc00::/48", "ipv6_subnet_len": 64},
     "ipv6_network, ipv6_subnet_len: these options only apply when IPv6 is on; set enable_ipv6: true"),
    ({"network": "10.1.0.0/16", "enable_ipv4": False, "enable_ipv6": True, "ipv6_network": "fc00::/48",
      "backend": {"type": "vxlan"}},
     "network: this option only applies when IPv4 is on; set enable_ipv4: true or leave it out"),
])
def test_network_ipv6_errors_come_before_etcd(args, line, capsys):
    out = run_module(flannel_network, args, capsys)
    assert out["failed"] is True
    assert out["msg"].startswith(line), out["msg"]
    assert "\n" not in out["msg"]


@pytest.mark.parametrize("args", [
    DUAL,
    {"enable_ipv4": False, "enable_ipv6": True, "ipv6_network": "fd00:42::/112", "ipv6_subnet_len": 120,
     "backend": {"type": "host-gw"}},
])
def test_valid_ipv6_configs_do_reach_for_etcd(args, capsys):
    out = run_module(flannel_network, args, capsys)
    assert out["msg"].startswith("etcd is unreachable"), out["msg"]


def lease(subnet, ip, subnet6=None, ip6=None):
    return (None, Lease(N(subnet) if subnet else None, LeaseAttrs(ip, public_ipv6=ip6),
                        ipv6_subnet=N(subnet6) if subnet6 else None))


def test_lease_problems_with_ipv6():
    v4 = parse_config({"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}})
    dual = parse_config({"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
                         "Backend": {"Type": "vxlan"}})
    v4_leases = [lease("10.1.5.0/24", "192.0.2.5")]
    dual_leases = [lease("10.1.5.0/24", "192.0.2.5", "fc00:0:0:5::/64", "2001:db8::5")]
    # turning IPv6 on moves nobody: each agent keeps its IPv4 subnet and adds an IPv6 one
    assert flannel_network.lease_problems(v4, dual, v4_leases) == (None, [])
    # turning it off again takes the nodes' IPv6 addresses away: force
    why, subnets = flannel_network.lease_problems(dual, v4, dual_leases)
    assert why.startswith("refusing to change EnableIPv6 from true to false: 1 existing lease(s) "
                          "(10.1.5.0/24 fc00:0:0:5::/64 of 192.0.2.5)"), why
    assert flannel_network.lease_problems(dual, dual, dual_leases) == (None, [])
    moved = parse_config({"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc01::/48",
                          "IPv6SubnetLen": 80, "Backend": {"Type": "vxlan"}})
    why, subnets = flannel_network.lease_problems(dual, moved, dual_leases)
    assert "IPv6Network from fc00::/48 to fc01::/48 and IPv6SubnetLen from 64 to 80" in why
    assert subnets == ["10.1.5.0/24 fc00:0:0:5::/64"] and "force: true" in why
    narrow = parse_config({"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
                           "IPv6SubnetMax": "fc00:0:0:4::", "Backend": {"Type": "vxlan"}})
    why, subnets = flannel_network.lease_problems(dual, narrow, dual_leases)
    assert "IPv6SubnetMin/IPv6SubnetMax to fc00:0:0:1::-fc00:0:0:4::" in why and subnets == [
        "10.1.5.0/24 fc00:0:0:5::/64"]
    only6 = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48",
                          "Backend": {"Type": "vxlan"}})
    six_leases = [lease(None, None, "fc00:0:0:5::/64", "2001:db8::5")]
    assert flannel_network.lease_problems(only6, only6, six_leases) == (None, [])
    assert flannel_network.lease_problems(only6, dual, six_leases) == (None, [])  # IPv4 added: kept
    why, subnets = flannel_network.lease_problems(dual, only6, dual_leases)
    assert "EnableIPv4 from true to false" in why and subnets == ["10.1.5.0/24 fc00:0:0:5::/64"]


def test_lease_fits_and_order():
    dual = parse_config({"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
                         "Backend": {"Type": "vxlan"}})
    assert flannel_module.lease_fits(dual, lease("10.1.5.0/24", "192.0.2.5", "fc00:0:0:5::/64", "2001:db8::5")[1])
    assert not flannel_module.lease_fits(dual, lease("10.1.5.0/24", "192.0.2.5")[1])
    assert not flannel_module.lease_fits(dual, lease("10.1.5.0/24", "192.0.2.5", "fc00:0:0:5::/80", "::5")[1])
    leases = [lease(None, None, "fc00:0:0:2::/64", "2001:db8::2")[1], lease("10.1.9.0/24", "192.0.2.9")[1],
              lease(None, None, "fc00:0:0:1::/64", "2001:db8::1")[1], lease("10.1.3.0/24", "192.0.2.3")[1]]
    assert [item.label for item in sorted(leases, key=flannel_module.lease_order)] == [
        "10.1.3.0/24", "10.1.9.0/24", "fc00:0:0:1::/64", "fc00:0:0:2::/64"]


@pytest.mark.parametrize("args, text", [
    ({"ipv6_subnet": "fc00:0:0:5::1/64", "public_ipv6": "2001:db8::5"},
     "ipv6_subnet='fc00:0:0:5::1/64': has host bits set; the subnet is fc00:0:0:5::/64"),
    ({"ipv6_subnet": "fc00:0:0:5::", "public_ipv6": "2001:db8::5"}, "ipv6_subnet='fc00:0:0:5::': needs a prefix"),
    ({"ipv6_subnet": "10.1.5.0/24", "public_ipv6": "2001:db8::5"},
     "ipv6_subnet='10.1.5.0/24': is not an IPv6 CIDR like fc00:0:0:5::/64; use subnet for an IPv4 subnet"),
    ({"subnet": "fc00:0:0:5::/64", "public_ip": "192.0.2.5"},
     "subnet='fc00:0:0:5::/64': is not an IPv4 CIDR like 10.1.5.0/24; use ipv6_subnet for an IPv6 subnet"),
    ({"ipv6_subnet": "fc00:0:0:5::/64", "public_ipv6": "192.0.2.5"},
     "public_ipv6='192.0.2.5': is not an IPv6 address like 2001:db8::1; use public_ip for an IPv4 address"),
    ({"ipv6_subnet": "fc00:0:0:5::/64", "public_ipv6": "2001:db8::x"}, "is not an IPv6 address"),
    ({"subnet": "10.1.5.0/24", "public_ip": "2001:db8::5"}, "use public_ipv6 for an IPv6 address"),
    ({"ipv6_subnet": "fc00:0:0:5::/64"}, "any of the following are missing: public_ip, public_ipv6"),
    ({"public_ipv6": "2001:db8::5"}, "any of the following are missing: subnet, ipv6_subnet"),
    ({"state": "absent"}, "subnet, ipv6_subnet, public_ip, public_ipv6"),
])
def test_lease_ipv6_arguments(args, text, capsys):
    out = run_module(flannel_lease, args, capsys)
    assert out["failed"] is True and text in out["msg"], out["msg"]
    assert "\n" not in out["msg"]


@pytest.mark.parametrize("args", [
    {"ipv6_subnet": "fc00:0:0:5::/64", "public_ipv6": "2001:db8::5"},
    {"ipv6_subnet": "fc00:0:0:5::/64", "state": "absent"},
    {"public_ipv6": "2001:db8::5", "state": "absent"},
])
def test_lease_ipv6_only_arguments_are_accepted(args, capsys):
    out = run_module(flannel_lease, args, capsys)
    assert out["msg"].startswith("etcd is unreachable"), out["msg"]


def test_lease_info_ipv6_filters(capsys):
    assert "is not an IPv6 address" in run_module(flannel_lease_info, {"public_ipv6": "x"}, capsys)["msg"]
    assert "is not an IPv6 CIDR" in run_module(flannel_lease_info, {"ipv6_subnet": "fc00::/129"}, capsys)["msg"]
    assert "use ipv6_subnet" in run_module(flannel_lease_info, {"subnet": "fc00::/48"}, capsys)["msg"]
    # a filter may have host bits: it is a range to look in, not a lease
    out = run_module(flannel_lease_info, {"ipv6_subnet": "fc00::1/56", "public_ipv6": "2001:DB8::1"}, capsys)
    assert out["msg"].startswith("etcd is unreachable"), out["msg"]


class FailingModule:
    def fail_json(self, **kwargs):
        raise RuntimeError(kwargs["msg"])


def test_parse_helpers_canonicalise():
    module = FailingModule()
    assert flannel_module.parse_ip(module, "public_ipv6", " 2001:DB8:0::1 ", 6) == "2001:db8::1"
    assert flannel_module.parse_ip(module, "public_ip", "192.0.2.1", 4) == "192.0.2.1"
    assert flannel_module.parse_subnet(module, "ipv6_subnet", "FC00:0:0:5::/64", 6) == N("fc00:0:0:5::/64")
    assert flannel_module.parse_subnet(module, "subnet", "10.1.5.9/24", 4, strict=False) == N("10.1.5.0/24")
    with pytest.raises(RuntimeError, match="has host bits set"):
        flannel_module.parse_subnet(module, "subnet", "10.1.5.9/24", 4)
