"""EnableNFTables without a kernel: the schema key, the module option, the tables pyflannel.nftables
renders (Go flanneld v0.25+'s chains and rule order), when it writes, and how the agent picks nftables or
iptables.  Real nft in network namespaces: tests/integration/test_nftables.py (this file has another name: pytest
imports both directories' test modules by their base names)."""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import json
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from pyflannel import agent as agent_mod
from pyflannel import ipmasq
from pyflannel import nftables as nft_mod
from pyflannel.leases import Lease, LeaseAttrs
from pyflannel.netconfig import RESTART_KEYS, ConfigError, changes, parse_config
from pyflannel.nftables import NFTables, NFTablesError, normalized

N = ipaddress.ip_network
V4 = {"Network": "10.100.0.0/16", "Backend": {"Type": "vxlan"}}
DUAL = dict(V4, EnableIPv6=True, IPv6Network="fc00:100::/48")

GO_V4 = """table ip flannel-ipv4 {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.100.0.0/16 accept
\t\tip daddr 10.100.0.0/16 accept
\t}

\tchain postrtg {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x4000 return
\t\tip saddr 10.100.5.0/24 ip daddr 10.100.0.0/16 return
\t\tip saddr 10.100.0.0/16 ip daddr 10.100.5.0/24 return
\t\tip saddr != 10.100.5.0/24 ip daddr 10.100.0.0/16 return
\t\tip saddr 10.100.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.100.0.0/16 ip daddr 10.100.0.0/16 masquerade fully-random
\t}
}
"""

GO_V6_MASQ = [
    "meta mark 0x4000 return",
    "ip6 saddr fc00:100:0:5::/64 ip6 daddr fc00:100::/48 return",
    "ip6 saddr fc00:100::/48 ip6 daddr fc00:100:0:5::/64 return",
    "ip6 saddr != fc00:100:0:5::/64 ip6 daddr fc00:100::/48 return",
    "ip6 saddr fc00:100::/48 ip6 daddr != ff00::/8 masquerade fully-random",
    "ip6 saddr != fc00:100::/48 ip6 daddr fc00:100::/48 masquerade fully-random",
]


def v4(masq: bool = True, forward: bool = True) -> NFTables:
    return NFTables(N("10.100.0.0/16"), N("10.100.5.0/24"), masq, forward, nft="nft")


def v6(masq: bool = True, forward: bool = True) -> NFTables:
    return NFTables(N("fc00:100::/48"), N("fc00:100:0:5::/64"), masq, forward, nft="nft")


# -- the schema --------------------------------------------------------------------------------------
def test_enable_nftables_defaults_to_false_and_stays_out_of_the_document() -> None:
    config = parse_config(V4)
    assert config.enable_nftables is False
    assert "EnableNFTables" not in config.to_dict() and "EnableNFTables" not in config.to_json()


@pytest.mark.parametrize("key", ["EnableNFTables", "enablenftables", "ENABLENFTABLES"])
def test_enable_nftables_true_case_insensitive_round_trip(key: str) -> None:
    config = parse_config(dict(V4, **{key: True}))
    assert config.enable_nftables is True
    assert config.to_dict()["EnableNFTables"] is True
    assert json.loads(config.to_json())["EnableNFTables"] is True
    assert parse_config(config.to_json()) == config
    assert parse_config(dict(V4, EnableNFTables=False)).enable_nftables is False
    assert parse_config(dict(V4, EnableNFTables=None)).enable_nftables is False  # null: the default, like Go


def test_enable_nftables_with_dual_stack_and_ipv6_only() -> None:
    dual = parse_config(dict(DUAL, EnableNFTables=True))
    assert dual.enable_nftables and dual.enable_ipv6 and dual.enable_ipv4
    only6 = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00:100::/48",
                          "EnableNFTables": True, "Backend": {"Type": "host-gw"}})
    assert only6.enable_nftables and only6.network is None


@pytest.mark.parametrize("value", ["true", "yes", 1, 0, [], {}, 1.0])
def test_a_bad_enable_nftables_is_one_line(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(dict(V4, EnableNFTables=value))
    line = str(err.value)
    assert line == "invalid network config: EnableNFTables=%s: must be true or false" % json.dumps(value)
    assert "\n" not in line


def test_the_key_is_listed_among_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(dict(V4, EnableNFTable=True))
    assert "EnableNFTables" in str(err.value)


def test_a_changed_enable_nftables_needs_an_agent_restart() -> None:
    assert "EnableNFTables" in RESTART_KEYS
    off, on = parse_config(V4), parse_config(dict(V4, EnableNFTables=True))
    assert changes(off, on) == (["EnableNFTables"], [])
    assert changes(on, off) == (["EnableNFTables"], [])
    assert changes(on, parse_config(dict(V4, enablenftables=True))) == ([], [])
    assert changes(off, on, values=True) == (["EnableNFTables False -> True"], [])
    assert changes(on, off, values=True) == (["EnableNFTables True -> False"], [])
    assert on != off


# -- the module option ----------------------------------------------------------------------------------
def _flannel_network() -> Any:
    """plugins/modules/flannel_network.py as ``ansible_collections.netfabric.flannel`` sees it (the
    plugin tests' conftest makes this checkout that collection)."""
    path = Path(__file__).resolve().parent / "plugins" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_plugin_tests_conftest", path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return importlib.import_module("ansible_collections.netfabric.flannel.plugins.modules.flannel_network")


def test_module_writes_enable_nftables_only_when_true() -> None:
    flannel_network = _flannel_network()
    base = {"network": "10.1.0.0/16", "backend": {"type": "vxlan"}}
    assert flannel_network.wanted_document(dict(base, enable_nftables=True)) == {
        "Network": "10.1.0.0/16", "EnableNFTables": True, "Backend": {"Type": "vxlan"}}
    for off in (False, None):
        assert "EnableNFTables" not in flannel_network.wanted_document(dict(base, enable_nftables=off))
    assert "EnableNFTables" not in flannel_network.wanted_document(base)
    doc = flannel_network.wanted_document(dict(base, enable_nftables=True))
    assert parse_config(doc).enable_nftables is True


def test_module_argument_spec_has_enable_nftables(monkeypatch: Any) -> None:
    flannel_network = _flannel_network()
    seen: Dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(flannel_network, "AnsibleModule", fake)
    with pytest.raises(Stop):
        flannel_network.main()
    assert seen["argument_spec"]["enable_nftables"] == {"type": "bool", "default": False}


# -- rendering ------------------------------------------------------------------------------------------
def test_ipv4_table_is_go_flanneld_s() -> None:
    t = v4()
    assert (t.family, t.nft_family, t.table, t.tool) == (4, "ip", "flannel-ipv4", "nftables flannel-ipv4")
    assert t.definition() == GO_V4
    assert t.script() == "table ip flannel-ipv4\ndelete table ip flannel-ipv4\n" + GO_V4
    assert list(t.rules()) == ["forward", "postrtg"]


def test_ipv6_table_is_go_flanneld_s() -> None:
    t = v6()
    assert (t.family, t.nft_family, t.table) == (6, "ip6", "flannel-ipv6")
    assert t.rules() == {"forward": ["ip6 saddr fc00:100::/48 accept", "ip6 daddr fc00:100::/48 accept"],
                         "postrtg": GO_V6_MASQ}
    text = t.definition()
    assert text.startswith("table ip6 flannel-ipv6 {\n\tchain forward {\n"
                           "\t\ttype filter hook forward priority filter; policy accept;\n")
    assert "\t\ttype nat hook postrouting priority srcnat; policy accept;\n" in text
    assert t.script().startswith("table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\ntable ip6 flannel-ipv6 {")


def test_flags_choose_the_chains() -> None:
    assert list(v4(masq=True, forward=False).rules()) == ["postrtg"]
    assert list(v4(masq=False, forward=True).rules()) == ["forward"]
    empty = v4(masq=False, forward=False)
    assert empty.rules() == {} and empty.definition() == "table ip flannel-ipv4 {\n}\n"


def test_plain_masquerade_without_fully_random() -> None:
    t = v4()
    t.random_fully = False
    rules = t.rules()["postrtg"]
    assert rules[4:] == ["ip saddr 10.100.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
                         "ip saddr != 10.100.0.0/16 ip daddr 10.100.0.0/16 masquerade"]
    assert "fully-random" not in t.definition()


def test_families_must_agree() -> None:
    with pytest.raises(ValueError, match="different address families"):
        NFTables(N("10.100.0.0/16"), N("fc00:100:0:5::/64"), True, True)


def test_normalized_ignores_layout_and_leading_zeros() -> None:
    listed = GO_V4.replace("meta mark 0x4000", "meta mark 0x00004000").replace("\t", "    ") + "\n\n"
    assert normalized(listed) == normalized(GO_V4)
    assert normalized(GO_V4.replace("10.100.5.0/24", "10.100.6.0/24")) != normalized(GO_V4)


# -- when nft is run ---------------------------------------------------------------------------------------
class FakeKernel:
    """Stands in for nft: keeps one listing per table; ``printer`` turns a definition into the listing
    (an nft that prints differently), ``refuse_fully_random`` rejects fully-random like an old kernel."""

    def __init__(self, printer: Any = None, refuse_fully_random: bool = False) -> None:
        self.tables: Dict[Tuple[str, str], str] = {}
        self.calls: List[Tuple[str, ...]] = []
        self.printer = printer or (lambda text: text.replace("0x4000", "0x00004000"))
        self.refuse_fully_random = refuse_fully_random

    def run(self, args: List[str], data: Optional[str] = None) -> str:
        self.calls.append(tuple(args))
        if args[:2] == ["list", "table"]:
            key = (args[2], args[3])
            if key not in self.tables:
                raise NFTablesError("nft list table %s %s failed: Error: No such file or directory" % key)
            return self.tables[key]
        assert args == ["-f", "-"] and data is not None
        if self.refuse_fully_random and "fully-random" in data:
            raise NFTablesError("nft -f - failed: /dev/stdin:12:3-70: Error: Could not process rule: Operation not "
                                "supported ip saddr 10.100.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        lines = data.splitlines()
        family, name = lines[0].split()[1:3]
        assert lines[1] == "delete table %s %s" % (family, name)  # the table is always replaced whole
        self.tables[(family, name)] = self.printer("\n".join(lines[2:]) + "\n")
        return ""

    def writes(self) -> int:
        return sum(1 for call in self.calls if call == ("-f", "-"))


def attach(t: NFTables, kernel: FakeKernel, monkeypatch: Any) -> NFTables:
    monkeypatch.setattr(t, "_run", kernel.run)
    return t


def test_ensure_writes_only_when_the_table_differs(monkeypatch: Any) -> None:
    kernel = FakeKernel()
    t = attach(v4(), kernel, monkeypatch)
    assert t.ensure() is True and kernel.writes() == 1
    assert t.ensure() is False and kernel.writes() == 1
    # a deleted rule, a deleted table, a foreign rule: each is one rewrite
    key = ("ip", "flannel-ipv4")
    kernel.tables[key] = kernel.tables[key].replace("\t\tip daddr 10.100.0.0/16 accept\n", "")
    assert t.ensure() is True and kernel.writes() == 2
    del kernel.tables[key]
    assert t.ensure() is True and kernel.writes() == 3
    kernel.tables[key] = kernel.tables[key].replace("policy accept;\n", "policy accept;\n\t\tcounter drop\n", 1)
    assert t.ensure() is True and kernel.writes() == 4
    assert normalized(kernel.tables[key]) == normalized(GO_V4)
    # a new lease: the same table rewritten with the new subnet
    moved = attach(NFTables(N("10.100.0.0/16"), N("10.100.9.0/24"), True, True, nft="nft"), kernel, monkeypatch)
    assert moved.ensure() is True and "10.100.5.0/24" not in kernel.tables[key]
    assert "ip saddr 10.100.9.0/24 ip daddr 10.100.0.0/16 return" in kernel.tables[key]


def test_an_nft_that_prints_otherwise_is_not_rewritten_in_a_loop(monkeypatch: Any) -> None:
    kernel = FakeKernel(printer=lambda text: text.replace("priority filter", "priority 0")
                        .replace("priority srcnat", "priority 100"))
    t = attach(v4(), kernel, monkeypatch)
    assert t.ensure() is True
    assert t.ensure() is False and t.ensure() is False and kernel.writes() == 1


def test_fully_random_refused_falls_back_to_plain_masquerade(monkeypatch: Any) -> None:
    kernel = FakeKernel(refuse_fully_random=True)
    t = attach(v4(), kernel, monkeypatch)
    assert t.ensure() is True and t.random_fully is False
    listing = kernel.tables[("ip", "flannel-ipv4")]
    assert "masquerade fully-random" not in listing and listing.count(" masquerade\n") == 2
    assert t.ensure() is False


def test_other_errors_are_not_swallowed(monkeypatch: Any) -> None:
    t = v4(masq=False)

    def broken(args: List[str], data: Optional[str] = None) -> str:
        raise NFTablesError("nft list table ip flannel-ipv4 failed: Error: Operation not permitted")

    monkeypatch.setattr(t, "_run", broken)
    with pytest.raises(NFTablesError, match="Operation not permitted"):
        t.ensure()


def test_remove_deletes_only_an_existing_table(monkeypatch: Any) -> None:
    kernel = FakeKernel()
    monkeypatch.setattr(nft_mod, "run_nft", lambda _nft, args, data=None: kernel.run(args, data))
    t = attach(v6(), kernel, monkeypatch)
    t.ensure()
    assert ("ip6", "flannel-ipv6") in kernel.tables
    kernel.tables.clear()  # what the "delete table" of remove() does in the kernel
    assert t.remove() is False
    kernel.tables[("ip6", "flannel-ipv6")] = "table ip6 flannel-ipv6 {\n}\n"
    assert t.remove() is True
    assert kernel.calls[-1] == ("-f", "-")


def test_a_missing_nft_is_one_line() -> None:
    t = NFTables(N("10.100.0.0/16"), N("10.100.5.0/24"), True, True, nft="/nonexistent/nft")
    with pytest.raises(NFTablesError) as err:
        t.ensure()
    line = str(err.value)
    assert "\n" not in line and "nftables package" in line and "EnableNFTables" in line


# -- the agent picks one kind of rules in one place ---------------------------------------------------------
class Recorder:
    made: List[Recorder] = []

    def __init__(self, network: Any, subnet: Any, masq: bool, forward: bool) -> None:
        self.args = (str(network), str(subnet), masq, forward)
        self.tool = "recorder"
        self.ensured = 0
        Recorder.made.append(self)

    def ensure(self) -> bool:
        self.ensured += 1
        return True


def _agent(ip_masq: bool = True, forward: bool = True) -> agent_mod.Agent:
    return agent_mod.Agent(types.SimpleNamespace(ip_masq=ip_masq, iptables_forward_rules=forward))


def _lease(config: Any) -> Lease:
    sub6 = N("fc00:100:0:5::/64") if config.enable_ipv6 else None
    sub4 = N("10.100.5.0/24") if config.enable_ipv4 else None
    return Lease(sub4, LeaseAttrs("192.0.2.1", "vxlan"), ipv6_subnet=sub6)


def test_agent_uses_nftables_and_never_iptables(monkeypatch: Any) -> None:
    Recorder.made = []
    removed: List[int] = []

    def no_iptables(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("iptables touched in nftables mode")

    monkeypatch.setattr(ipmasq, "IPTables", no_iptables)
    monkeypatch.setattr(nft_mod, "NFTables", Recorder)
    monkeypatch.setattr(nft_mod, "remove_table", lambda version: removed.append(version) or False)
    config = parse_config(dict(DUAL, EnableNFTables=True))
    agent = _agent()
    agent._setup_iptables(config, _lease(config))
    assert [r.args for r in Recorder.made] == [("10.100.0.0/16", "10.100.5.0/24", True, True),
                                               ("fc00:100::/48", "fc00:100:0:5::/64", True, True)]
    assert all(r.ensured == 1 for r in Recorder.made) and agent.iptables == Recorder.made
    assert removed == []
    # IPv4 only: the IPv6 table of an earlier dual-stack config goes; both flags off: the table is still made
    Recorder.made = []
    config = parse_config(dict(V4, EnableNFTables=True))
    _agent(ip_masq=False, forward=False)._setup_iptables(config, _lease(config))
    assert [r.args for r in Recorder.made] == [("10.100.0.0/16", "10.100.5.0/24", False, False)]
    assert removed == [6]


def test_agent_uses_iptables_as_before_when_nftables_is_off(monkeypatch: Any) -> None:
    Recorder.made = []

    def no_nftables(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("nftables touched in iptables mode")

    monkeypatch.setattr(ipmasq, "IPTables", Recorder)
    monkeypatch.setattr(nft_mod, "NFTables", no_nftables)
    monkeypatch.setattr(nft_mod, "remove_table", no_nftables)
    config = parse_config(DUAL)
    _agent()._setup_iptables(config, _lease(config))
    assert [r.args[:2] for r in Recorder.made] == [("10.100.0.0/16", "10.100.5.0/24"),
                                                   ("fc00:100::/48", "fc00:100:0:5::/64")]
    Recorder.made = []
    _agent(ip_masq=False, forward=False)._setup_iptables(config, _lease(config))
    assert Recorder.made == []  # both flags off: no iptables rules at all, as before


def test_agent_start_fails_with_one_line_when_nft_is_missing(monkeypatch: Any) -> None:
    monkeypatch.setattr(nft_mod, "nft_command", lambda: "/nonexistent/nft")
    config = parse_config(dict(V4, EnableNFTables=True))
    with pytest.raises(agent_mod._Fatal) as err:
        _agent()._setup_iptables(config, _lease(config))
    line = str(err.value)
    assert line.startswith("could not install the nftables flannel-ipv4 rules: /nonexistent/nft is not installed")
    assert "\n" not in line
