"""The backend catalogue is the one source: every copy of what it says must agree with it.

Copies that are written from it (module DOCUMENTATION, the role's argument specs and defaults comment)
are checked by running ``scripts/backend_options.py --check``; the rest (the schema, the agent's registry, the
module's argument spec, backend lists in lab/, bench/, molecule/, the Makefile, the example inventory,
the teardown) are compared here directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import yaml
from ansible_collections.netfabric.flannel.plugins.module_utils import catalogue as cat
from ansible_collections.netfabric.flannel.plugins.module_utils import netconfig
from ansible_collections.netfabric.flannel.plugins.modules import flannel_network

REPO = Path(__file__).resolve().parents[4]
DATAPATHS = set(cat.DATAPATHS)


def _text(rel: str) -> str:
    return (REPO / rel).read_text()


def test_generated_blocks_are_current() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "backend_options.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_generator_notices_a_stale_block(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("backend_options", REPO / "scripts" / "backend_options.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = _text("roles/flannel/defaults/main.yml")
    assert gen.render("roles/flannel/defaults/main.yml", text) == text
    stale = text.replace("wireguard: ", "wireguard-old: ")
    assert gen.render("roles/flannel/defaults/main.yml", stale) == text


def test_schema_knows_exactly_the_catalogue() -> None:
    assert list(netconfig.BACKEND_OPTIONS) == cat.names()
    for backend in cat.BACKENDS:
        assert list(netconfig.BACKEND_OPTIONS[backend.name]) == backend.option_names
        parsed = netconfig.parse_config({"Network": "10.1.0.0/16", "Backend": {"Type": backend.name}})
        assert parsed.backend == {o.go: o.default for o in backend.options}
    assert not set(cat.FOREIGN_BACKENDS) & set(cat.names())


def test_every_option_range_and_choice_is_enforced() -> None:
    for backend in cat.BACKENDS:
        for opt in backend.options:
            if opt.kind == "int":
                bad = [opt.low - 1, opt.high + 1]
            elif opt.choices:
                bad = ["not-a-choice"]
            elif opt.kind == "key":
                bad = ["c2hvcnQ="]
            else:
                continue
            for value in bad:
                try:
                    netconfig.parse_config({"Network": "10.1.0.0/16", "Backend": {"Type": backend.name, opt.go: value}})
                except netconfig.ConfigError as err:
                    assert "Backend." + opt.go in str(err)
                else:
                    raise AssertionError("%s %s=%r was accepted" % (backend.name, opt.go, value))


def test_the_agent_registry_is_the_catalogue() -> None:
    from pyflannel import backend as backends

    assert backends.available() == sorted(cat.names())
    for backend in cat.BACKENDS:
        cls = backends._REGISTRY[backend.name]
        assert cls.__module__ == "pyflannel.backend." + backend.module
    assert cat.get("vxlan").route_proto == importlib.import_module("pyflannel.netlink").RTPROT_VXLAN


def test_route_protocols_and_devices_are_distinct() -> None:
    protos = [b.route_proto for b in cat.BACKENDS if b.route_proto is not None]
    assert len(protos) == len(set(protos))
    devices = [d for b in cat.BACKENDS for d in b.devices]
    assert len(devices) == len(set(devices))


def test_module_argument_spec_is_the_catalogue() -> None:
    spec = flannel_network.backend_spec()
    assert set(spec) == {"type"} | set(cat.all_options())
    for name, (opt, _backends) in cat.all_options().items():
        assert spec[name]["type"] == opt.ansible_type
        assert spec[name].get("no_log", False) == opt.no_log
    doc = yaml.safe_load(flannel_network.DOCUMENTATION)["options"]["backend"]["suboptions"]
    assert set(doc) == set(spec)
    assert dict(flannel_network.BACKEND_KEYS) == {n: o.go for n, (o, _b) in cat.all_options().items()}


def test_role_argument_specs_are_the_catalogue() -> None:
    specs = yaml.safe_load(_text("roles/flannel/meta/argument_specs.yml"))["argument_specs"]
    seen = 0
    for entry in specs.values():
        backend = entry["options"].get("flannel_backend")
        if backend is None:
            continue
        seen += 1
        assert backend["options"]["type"]["choices"] == cat.names()
        assert set(backend["options"]) == {"type"} | set(cat.all_options())
    assert seen >= 1


def test_backend_lists_elsewhere_match() -> None:
    """The test plans that go through every datapath (the cluster scenario's switches, its route check per
    backend, the lab) cover each backend of the catalogue."""
    cluster = re.search(r"^cluster_backends=\(([^)]*)\)", _text("lab/run-molecule.sh"), re.M).group(1).split()
    assert set(cluster) == DATAPATHS and len(cluster) == len(DATAPATHS), "lab/run-molecule.sh cluster_backends"
    verify = _text("molecule/shared/verify.yml")
    for name in DATAPATHS:
        assert "verify_backend == '%s'" % name in verify, "verify.yml has no route check for %s" % name
    sys.path.insert(0, str(REPO / "lab"))
    try:
        lab = importlib.import_module("lab")
    finally:
        sys.path.pop(0)
    assert set(lab.BACKENDS) == DATAPATHS


def test_bench_covers_every_datapath() -> None:
    spec = importlib.util.spec_from_file_location("bench_datapath", REPO / "bench" / "datapath.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert set(bench.BACKENDS) == DATAPATHS


def test_teardown_keeps_no_list_of_its_own() -> None:
    """The teardown asks the agent (pyflannel.node, whose names come from the catalogue and the backends) and
    keeps no copy of route protocols, device names, units, chains or tables."""
    text = _text("playbooks/tasks/teardown.yml")
    assert "'pyflannel.node', 'teardown'" in text
    for proto in (b.route_proto for b in cat.BACKENDS if b.route_proto is not None):
        assert not re.search(r"\b%d\b" % proto, text), proto
    for copy in ("flannel-wg", "flannel0", "flannel-wireguard-go", "FLANNEL-", "flannel-ipv4", "flannel-ipv6",
                 "iptables-save", "nft "):
        assert copy not in text, copy
    from pyflannel import node

    for name in ("flannel0", "flannel.1", "flannel.4096", "flannel-v6.1", "flannel-wg", "flannel-wg-v6"):
        assert node.is_flannel_device(name), name
    assert not node.is_flannel_device("flannel.x") and not node.is_flannel_device("docker0")
    assert set(node.route_protocols()) == {b.route_proto for b in cat.BACKENDS if b.route_proto is not None}
