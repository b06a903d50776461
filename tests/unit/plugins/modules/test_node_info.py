"""flannel_node_info: what a node holds, read from stand-in ``ip -j`` and ``systemctl`` answers, a real subnet
file and agent directory; the wheel check with the real interpreter's tags (packaging.tags) and the basic one."""

from __future__ import annotations

import json
import platform
import sys

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.netfabric.flannel.plugins.modules import flannel_node_info as mod

LINKS = [
    {"ifname": "lo", "mtu": 65536, "flags": ["LOOPBACK", "UP"]},
    {"ifname": "eth0", "mtu": 1500, "flags": ["UP"], "linkinfo": {"info_kind": "veth"}},
    {"ifname": "flannel.1", "mtu": 1450, "flags": ["BROADCAST", "UP", "LOWER_UP"], "linkinfo": {"info_kind": "vxlan"}},
    {"ifname": "flannel-v6.1", "mtu": 1430, "flags": ["BROADCAST"], "linkinfo": {"info_kind": "vxlan"}},
    {"ifname": "flannel-wg", "mtu": 1420, "flags": ["UP"], "linkinfo": {"info_kind": "tun"}},
    {"ifname": "flannel.x", "mtu": 1500, "flags": []},  # no backend names a device like this
]
ROUTES4 = [
    {"dst": "10.100.0.0/16", "dev": "eth0", "protocol": "2"},
    {"dst": "10.100.7.0/24", "gateway": "10.100.7.0", "dev": "flannel.1", "protocol": "109"},
    {"dst": "10.100.9.0/24", "gateway": "192.0.2.9", "dev": "eth0", "protocol": "108"},
    {"dst": "10.200.0.0/24", "gateway": "192.0.2.1", "dev": "eth0", "protocol": "4"},
]
ROUTES6 = [{"dst": "fc00:100:0:7::/64", "gateway": "fc00:100:0:7::", "dev": "flannel-v6.1", "protocol": "109"}]
DOCKER0 = [{"ifname": "docker0", "mtu": 1450, "addr_info": [
    {"family": "inet", "local": "10.100.42.1", "prefixlen": 24},
    {"family": "inet6", "local": "fc00:100:0:2a::1", "prefixlen": 64, "scope": "global"},
    {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]}]
ENV = ("FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.42.1/24\nFLANNEL_IPV6_NETWORK=fc00:100::/48\n"
       "FLANNEL_IPV6_SUBNET=fc00:100:0:2a::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
SYSTEMD = {"flanneld": "LoadState=loaded\nActiveState=active\n", "docker": "LoadState=loaded\nActiveState=failed\n",
           "etcd": "LoadState=not-found\nActiveState=inactive\n"}


@pytest.fixture
def node(monkeypatch, tmp_path):
    """Stand-in answers of ip and systemctl (everything else, like the tag probe, runs for real); returns the
    list of commands run and the paths of the subnet file and the agent."""
    calls = []
    real_run = AnsibleModule.run_command

    def run_command(self, args, **kwargs):
        calls.append(args)
        if args[0] == "/bin/ip":
            rest = args[2:]
            if rest[:2] == ["-d", "link"]:
                return 0, json.dumps(LINKS), ""
            if rest[:1] == ["address"]:
                return (0, json.dumps(DOCKER0), "") if rest[-1] == "docker0" else (1, "", "Device does not exist")
            if "route" in rest:
                return 0, json.dumps(ROUTES6 if "-6" in rest else ROUTES4), ""
        if args[0] == "/bin/systemctl":
            return 0, SYSTEMD[args[-1].split(".")[0]], ""
        return real_run(self, args, **kwargs)

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, *a, **k: "/bin/" + name)
    env = tmp_path / "subnet.env"
    env.write_text(ENV)
    agent = tmp_path / "agent"
    meta = agent / "lib" / "python3.11" / "site-packages" / "pyflannel-0.3.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: pyflannel\nVersion: 0.3.0\n")
    (agent / "bin").mkdir()
    (agent / "bin" / "python").write_text("")
    return {"calls": calls, "env": str(env), "agent": str(agent)}


def run(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit):
        mod.main()
    return json.loads(capsys.readouterr().out)


def test_everything_a_node_holds(node, capsys):
    out = run({"subnet_file": node["env"], "install_dir": node["agent"], "_ansible_check_mode": True}, capsys)
    assert out["changed"] is False
    assert out["subnet_env"]["FLANNEL_SUBNET"] == "10.100.42.1/24" and out["mtu"] == 1450
    assert (out["flannel_address"], out["flannel_address6"]) == ("10.100.42.1", "fc00:100:0:2a::1")
    assert out["bridge"] == {"name": "docker0", "exists": True, "mtu": 1450, "addresses": ["10.100.42.1/24"],
                             "addresses6": ["fc00:100:0:2a::1/64"], "state": "ok"}
    assert [(d["name"], d["backend"], d["up"]) for d in out["devices"]] == [
        ("flannel.1", "vxlan", True), ("flannel-v6.1", "vxlan", False), ("flannel-wg", "wireguard", True)]
    assert [(r["family"], r["dst"], r["protocol"], r["backend"]) for r in out["routes"]] == [
        (4, "10.100.7.0/24", 109, "vxlan"), (4, "10.100.9.0/24", 108, "host-gw"),
        (6, "fc00:100:0:7::/64", 109, "vxlan")]
    assert out["services"] == {"flanneld": "active", "docker": "failed", "etcd": "-"}
    assert out["agent"] == {"installed": True, "python": node["agent"] + "/bin/python", "version": "0.3.0"}
    assert out["problems"] == ["docker is failed"]
    assert "wheel_fit" not in out


def test_problems_of_a_node_without_subnet_file_or_with_the_wrong_bridge(node, capsys, tmp_path):
    out = run({"subnet_file": str(tmp_path / "none.env"), "install_dir": str(tmp_path / "no-agent"),
               "services": ["flanneld"]}, capsys)
    assert out["subnet_env"] == {} and out["mtu"] is None and out["bridge"]["state"] == "no subnet.env"
    assert out["agent"] == {"installed": False, "python": str(tmp_path / "no-agent/bin/python"), "version": None}
    assert out["problems"] == ["no %s (is flanneld running?)" % (tmp_path / "none.env")]
    wrong = tmp_path / "wrong.env"
    wrong.write_text(ENV.replace("10.100.42.1/24", "10.100.43.1/24").replace("0:2a::1/64", "0:2b::1/64"))
    out = run({"subnet_file": str(wrong), "services": []}, capsys)
    assert out["bridge"]["state"] == "mismatch"
    assert out["problems"] == ["docker0 is 10.100.42.1/24, subnet.env says 10.100.43.1/24",
                               "docker0 has IPv6 fc00:100:0:2a::1/64, subnet.env says fc00:100:0:2b::1/64"]
    out = run({"subnet_file": node["env"], "bridge": "br-missing", "services": []}, capsys)
    assert out["bridge"]["exists"] is False and out["bridge"]["state"] == "mismatch"


def test_gather_nothing_reads_nothing(node, capsys):
    out = run({"gather": []}, capsys)
    assert node["calls"] == []
    assert out["devices"] == [] and out["routes"] == [] and out["services"] == {} and out["bridge"]["state"] == "-"


def test_wheels_against_this_interpreters_tags(node, capsys, tmp_path):
    py = "cp%d%d" % sys.version_info[:2]
    arch = platform.machine()
    other = "aarch64" if arch != "aarch64" else "x86_64"
    wheels = ["pyflannel-0.3.0-py3-none-any.whl", "wrapt-1.0-%s-%s-manylinux_2_17_%s.whl" % (py, py, arch),
              "wrapt-1.0-%s-%s-manylinux_2_17_%s.whl" % (py, py, other),
              "x-1.0-%s-%s-manylinux_2_999_%s.whl" % (py, py, arch), "not-a-wheel.tar.gz"]
    out = run({"gather": [], "wheels": wheels, "wheel_python": str(tmp_path / "absent")}, capsys)
    fit = out["wheel_fit"]
    assert fit["interpreter"] == sys.executable and fit["method"] == "packaging"
    assert fit["python"] == "%d.%d" % sys.version_info[:2] and fit["architecture"] == arch
    assert fit["misfits"] == wheels[2:]
    assert fit["misfit_pythons"] == [py] and fit["misfit_platforms"] == [other, arch]


def test_an_interpreter_that_does_not_answer_fails_in_one_line(node, capsys, tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no such thing' >&2\nexit 3\n")
    broken.chmod(0o755)
    out = run({"gather": [], "wheels": [], "wheel_python": str(broken)}, capsys)
    assert out["failed"] and out["msg"] == ("cannot tell which wheels %s accepts: it did not answer the tag probe "
                                            "(no such thing)" % broken)


@pytest.mark.parametrize("name, tags", [
    ("a-1.0-py3-none-any.whl", {"py3-none-any"}),
    ("a-1.0-1build-py2.py3-none-any.whl", {"py2-none-any", "py3-none-any"}),
    ("a-1.0-cp311-cp311-manylinux1_x86_64.manylinux_2_5_x86_64.whl",
     {"cp311-cp311-manylinux1_x86_64", "cp311-cp311-manylinux_2_5_x86_64"}),
    ("a-1.0.tar.gz", None), ("a-py3-none-any.whl", None),
])
def test_wheel_file_names(name, tags):
    assert mod.wheel_tags(name) == tags


@pytest.mark.parametrize("tag, fits", [
    ("py3-none-any", True), ("py311-none-any", True), ("py39-none-any", True), ("py313-none-any", False),
    ("py2-none-any", False), ("cp311-cp311-manylinux_2_17_x86_64", True), ("cp311-cp311-linux_x86_64", True),
    ("cp311-cp311-manylinux_2_17_aarch64", False), ("cp39-cp39-manylinux_2_17_x86_64", False),
    ("cp37-abi3-manylinux_2_17_x86_64", True), ("cp312-abi3-manylinux_2_17_x86_64", False),
    ("cp311-none-any", True), ("cp310-none-any", False),
])
def test_the_basic_check_without_packaging(tag, fits):
    assert mod.basic_fit(tag, {"python": "3.11", "architecture": "x86_64", "implementation": "cpython"}) is fits
