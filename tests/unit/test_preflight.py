"""The flannel role's wheelhouse preflight, run for real: ansible-playbook against localhost (connection
local) with the role's preflight tasks (flannel_node_info asks the interpreter which tags it supports), fake
wheelhouses (empty wheel files with real names) and stand-in interpreters: one without the packaging
distribution (pip's vendored copy answers), and, for a node with another Python or no packaging
implementation at all, one that answers the tag probe itself (the basic check then judges)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.ansible_runner import VENV_BIN, ansible_env, collection_root, yaml_dump

PY = "cp%d%d" % sys.version_info[:2]
ARCH = platform.machine()
OTHER_ARCH = "aarch64" if ARCH != "aarch64" else "x86_64"
PREFLIGHT = {"name": "netfabric.flannel.flannel", "tasks_from": "preflight"}
PURE = ["pyflannel-0.1.0-py3-none-any.whl", "pbr-7.1.3-py2.py3-none-any.whl"]


def binary(name: str, py: str = PY, arch: str = ARCH, abi: str = "") -> str:
    return "%s-1.0-%s-%s-manylinux1_%s.manylinux_2_28_%s.whl" % (name, py, abi or py, arch, arch)


CASES: Dict[str, Dict] = {
    "matching": {"wheels": [*PURE, binary("wrapt"), binary("charset_normalizer")]},
    "pure only": {"wheels": PURE},
    "empty": {"wheels": []},
    "abi3 for an older python": {"wheels": [*PURE, "cryptography-42.0-cp37-abi3-manylinux_2_28_%s.whl" % ARCH]},
    "linux platform tag": {"wheels": [*PURE, "wrapt-1.0-%s-%s-linux_%s.whl" % (PY, PY, ARCH)]},
    "other architecture": {"wheels": [*PURE, binary("wrapt", arch=OTHER_ARCH)]},
    "other python": {"wheels": [*PURE, binary("wrapt", py="cp39")]},
    "abi3 for a newer python": {"wheels": [*PURE, "cryptography-42.0-cp3%d-abi3-manylinux_2_28_%s.whl"
                                                  % (sys.version_info[1] + 1, ARCH)]},
    # packaging.tags semantics: a manylinux wheel for a newer glibc than the node's does not fit (a regex on
    # the architecture alone let it through)
    "newer glibc": {"wheels": [*PURE, "wrapt-1.0-%s-%s-manylinux_2_999_%s.whl" % (PY, PY, ARCH)]},
    "node with another python": {"wheels": [*PURE, binary("wrapt")], "python": "3.99"},
    "no interpreter yet": {"wheels": [*PURE, binary("wrapt", arch=OTHER_ARCH)], "python": "missing"},
    # without the packaging distribution: pip's vendored packaging answers
    "pip only, matching": {"wheels": [*PURE, binary("wrapt")], "python": "pip"},
    "pip only, other architecture": {"wheels": [*PURE, binary("wrapt", arch=OTHER_ARCH)], "python": "pip"},
    # no packaging implementation on the node (no venv support yet): the basic check
    "basic, matching": {"wheels": [*PURE, binary("wrapt"), "cryptography-42.0-cp37-abi3-manylinux_2_28_%s.whl" % ARCH],
                        "python": "%d.%d" % sys.version_info[:2]},
    "basic, other architecture": {"wheels": [*PURE, binary("wrapt", arch=OTHER_ARCH)],
                                  "python": "%d.%d" % sys.version_info[:2]},
}


def pip_only(base: Path) -> str:
    """An interpreter that has pip but not the packaging distribution: this Python without site-packages
    (-S), with a directory holding only pip on its path."""
    import pip

    only = base / "pip-only"
    only.mkdir()
    (only / "pip").symlink_to(Path(pip.__file__).parent, target_is_directory=True)
    python = base / "python-pip-only"
    python.write_text('#!/bin/sh\nPYTHONPATH=%s exec %s -S "$@"\n' % (only, sys.executable))
    python.chmod(0o755)
    return str(python)


def run_cases(base: Path, collections: Path, tasks: List[Dict], play_options: Dict) -> Dict[str, Dict]:
    """Run ``tasks`` (one rescued block per case, recording into ``outcomes``) in one ansible-playbook
    run on localhost; returns the recorded outcomes."""
    out = base / "outcomes.json"
    tasks = [*tasks, {"ansible.builtin.copy": {"content": "{{ outcomes | to_json }}", "dest": str(out)}}]
    play = [{"hosts": "localhost", "connection": "local", **play_options,
             "vars": {"ansible_python_interpreter": sys.executable, "outcomes": {}}, "tasks": tasks}]
    (base / "play.yml").write_text(yaml_dump(play))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(base / "play.yml")],
                          env=ansible_env(collections, base), cwd=str(base), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict]:
    """Every case in one ansible-playbook run: each includes the preflight in a block; a failure is
    rescued and its message recorded."""
    base = tmp_path_factory.mktemp("preflight")
    collections = collection_root(base / "collections")
    tasks: List[Dict] = []
    for index, (case, spec) in enumerate(CASES.items()):
        wheelhouse = base / ("wheelhouse-%d" % index)
        wheelhouse.mkdir()
        for name in spec["wheels"]:
            (wheelhouse / name).write_bytes(b"")
        python = sys.executable
        if spec.get("python") == "missing":
            python = str(base / "not-installed" / "python3")
        elif spec.get("python") == "pip":
            python = pip_only(base) if not (base / "pip-only").exists() else str(base / "python-pip-only")
        elif "python" in spec:  # an interpreter without packaging or pip that answers the probe as version X.Y
            python = str(base / ("python-%d" % index))
            probe = {"python": spec["python"], "architecture": ARCH, "implementation": "cpython", "tags": None,
                     "method": "none"}
            Path(python).write_text("#!/bin/sh\necho '%s'\n" % json.dumps(probe))
            Path(python).chmod(0o755)
        tasks.append({"block": [
            {"name": case, "ansible.builtin.include_role": PREFLIGHT,
             "vars": {"flannel_wheelhouse_dir": str(wheelhouse), "flannel_os_python": python}},
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': false, 'method': "
                                                      "__flannel_fit.wheel_fit.method}}) }}" % json.dumps(case)}},
        ], "rescue": [
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': true, 'msg': "
                                                      "ansible_failed_result.msg}}) }}" % json.dumps(case)}},
        ]})
    return run_cases(base, collections, tasks, {"gather_facts": True, "gather_subset": ["!all"]})


@pytest.mark.parametrize("case", ["matching", "pure only", "empty", "abi3 for an older python",
                                  "linux platform tag"])
def test_a_fitting_wheelhouse_passes(outcomes: Dict[str, Dict], case: str) -> None:
    assert outcomes[case] == {"failed": False, "method": "packaging"}


def test_packaging_semantics_judge_the_glibc_version(outcomes: Dict[str, Dict]) -> None:
    msg = outcomes["newer glibc"]["msg"]
    assert "holds %s wheels for %s (wrapt-1.0-" % (PY, ARCH) in msg and "\n" not in msg


def test_without_packaging_pips_copy_answers(outcomes: Dict[str, Dict]) -> None:
    assert outcomes["pip only, matching"] == {"failed": False, "method": "pip"}
    msg = outcomes["pip only, other architecture"]["msg"]
    assert "holds %s wheels for %s" % (PY, OTHER_ARCH) in msg and "python-pip-only" in msg


def test_without_any_packaging_the_basic_check_answers(outcomes: Dict[str, Dict]) -> None:
    assert outcomes["basic, matching"] == {"failed": False, "method": "basic"}
    msg = outcomes["basic, other architecture"]["msg"]
    assert "holds %s wheels for %s (%s)" % (PY, OTHER_ARCH, binary("wrapt", arch=OTHER_ARCH)) in msg


def test_other_architecture_fails_in_one_line(outcomes: Dict[str, Dict]) -> None:
    result = outcomes["other architecture"]
    assert result["failed"]
    msg = result["msg"]
    assert "\n" not in msg
    node = "%d.%d" % sys.version_info[:2]
    assert "the agent would run on Python %s (%s) on %s" % (node, sys.executable, ARCH) in msg
    assert "holds %s wheels for %s (%s)" % (PY, OTHER_ARCH, binary("wrapt", arch=OTHER_ARCH)) in msg
    assert "set flannel_install_method: distro" in msg
    assert "pyflannel-0.1.0" not in msg  # pure wheels fit everywhere: not named


def test_other_python_fails(outcomes: Dict[str, Dict]) -> None:
    msg = outcomes["other python"]["msg"]
    assert "holds cp39 wheels for %s" % ARCH in msg and "\n" not in msg
    assert "distro" in msg
    assert "holds" in outcomes["abi3 for a newer python"]["msg"]


def test_the_interpreter_of_the_venv_is_asked(outcomes: Dict[str, Dict]) -> None:
    """The node's Python is that of flannel_os_python (the venv's), not the one Ansible runs on."""
    msg = outcomes["node with another python"]["msg"]
    assert "would run on Python 3.99 (" in msg and "on %s" % ARCH in msg
    assert "holds %s wheels for %s" % (PY, ARCH) in msg
    assert "on a controller whose flannel_wheel_python is Python 3.99 on %s" % ARCH in msg


def test_without_the_interpreter_the_facts_answer(outcomes: Dict[str, Dict]) -> None:
    """flannel_os_python not installed yet: the Python Ansible runs on the node stands in."""
    msg = outcomes["no interpreter yet"]["msg"]
    assert "would run on Python %d.%d (%s) on %s" % (*sys.version_info[:2], sys.executable, ARCH) in msg


# ---- the etcd role's tarball settings follow the host's architecture ----

# public: the role's defaults (etcd_tarball_arch, etcd_tarball_url) stay visible to the recording task
TARBALL_SETTINGS = {"name": "netfabric.flannel.etcd", "tasks_from": "tarball_settings", "public": True}
SHA_AMD64 = "sha256:" + "a" * 64
SHA_ARM64 = "sha256:" + "b" * 64
ETCD_CASES: Dict[str, Dict] = {
    "x86_64": {"architecture": "x86_64", "checksum": SHA_AMD64},
    "aarch64": {"architecture": "aarch64", "checksum": {"amd64": SHA_AMD64, "arm64": SHA_ARM64}},
    "ppc64le": {"architecture": "ppc64le", "checksum": "sha512:" + "c" * 128},
    "s390x": {"architecture": "s390x", "checksum": "sha256:" + "d" * 64},
    "riscv64": {"architecture": "riscv64", "checksum": SHA_AMD64},
    "aarch64 without its checksum": {"architecture": "aarch64", "checksum": {"amd64": SHA_AMD64}},
    "no checksum": {"architecture": "x86_64", "checksum": ""},
}


@pytest.fixture(scope="module")
def etcd_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict]:
    base = tmp_path_factory.mktemp("etcd-arch")
    collections = collection_root(base / "collections")
    tasks: List[Dict] = []
    for case, spec in ETCD_CASES.items():
        record = ("{{ outcomes | combine({%s: {'failed': false, 'arch': etcd_tarball_arch, 'url': etcd_tarball_url, "
                  "'checksum': __etcd_tarball_checksum}}) }}" % json.dumps(case))
        tasks.append({"block": [
            {"name": case, "ansible.builtin.include_role": TARBALL_SETTINGS,
             "vars": {"ansible_facts": {"architecture": spec["architecture"]},
                      "etcd_tarball_checksum": spec["checksum"]}},
            {"ansible.builtin.set_fact": {"outcomes": record},
             "vars": {"ansible_facts": {"architecture": spec["architecture"]}}},
        ], "rescue": [
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': true, 'msg': "
                                                      "ansible_failed_result.msg}}) }}" % json.dumps(case)}},
        ]})
    return run_cases(base, collections, tasks, {"gather_facts": False})


@pytest.mark.parametrize(("case", "arch", "checksum"), [
    ("x86_64", "amd64", SHA_AMD64),
    ("aarch64", "arm64", SHA_ARM64),
    ("ppc64le", "ppc64le", "sha512:" + "c" * 128),
    ("s390x", "s390x", "sha256:" + "d" * 64),
])
def test_etcd_tarball_follows_the_architecture(etcd_outcomes: Dict[str, Dict], case: str, arch: str,
                                               checksum: str) -> None:
    result = etcd_outcomes[case]
    assert not result["failed"], result
    assert result["arch"] == arch and result["checksum"] == checksum
    assert result["url"] == ("https://github.com/etcd-io/etcd/releases/download/v3.5.17/etcd-v3.5.17-linux-%s.tar.gz"
                             % arch)


def test_etcd_tarball_other_architecture_fails_in_one_line(etcd_outcomes: Dict[str, Dict]) -> None:
    msg = etcd_outcomes["riscv64"]["msg"]
    assert msg.startswith("localhost is riscv64, but etcd release tarballs exist only for x86_64 (amd64)")
    assert "etcd_install_method: package" in msg and "\n" not in msg


def test_etcd_tarball_checksum_per_architecture_is_required(etcd_outcomes: Dict[str, Dict]) -> None:
    msg = etcd_outcomes["aarch64 without its checksum"]["msg"]
    assert "needs etcd_tarball_checksum.arm64 like" in msg and "etcd-v3.5.17-linux-arm64.tar.gz" in msg
    assert "needs etcd_tarball_checksum like" in etcd_outcomes["no checksum"]["msg"]


# ---- the docker role refuses an IPv6-only network (no IPv4 flannel subnet for --bip) ----

DOCKER_SETTINGS = {"name": "netfabric.flannel.docker", "tasks_from": "settings"}
DOCKER_CASES: Dict[str, Dict] = {"dual stack": {"flannel_enable_ipv4": True, "flannel_enable_ipv6": True},
                                 "ipv4 unset": {}, "ipv6 only": {"flannel_enable_ipv4": False,
                                                                 "flannel_enable_ipv6": True}}


def test_docker_role_refuses_an_ipv6_only_network_in_one_line(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("docker-settings")
    tasks: List[Dict] = []
    for case, case_vars in DOCKER_CASES.items():
        tasks.append({"block": [
            {"name": case, "ansible.builtin.include_role": DOCKER_SETTINGS, "vars": case_vars},
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': false}}) }}"
                                                      % json.dumps(case)}},
        ], "rescue": [
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': true, 'msg': "
                                                      "ansible_failed_result.msg}}) }}" % json.dumps(case)}},
        ]})
    got = run_cases(base, collection_root(base / "collections"), tasks, {"gather_facts": False})
    assert got["dual stack"] == {"failed": False} and got["ipv4 unset"] == {"failed": False}
    msg = got["ipv6 only"]["msg"]
    assert msg.startswith("flannel_enable_ipv4 is false (an IPv6-only flannel network)") and "\n" not in msg
    assert "flannel_enable_ipv4: true" in msg
