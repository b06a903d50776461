"""The flannel role's wheelhouse preflight, run for real: ansible-playbook against localhost (connection
local) with the role's preflight tasks, fake wheelhouses (empty wheel files with real names) and, for a
node with another Python, a stand-in interpreter that answers with another version."""

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
    "node with another python": {"wheels": [*PURE, binary("wrapt")], "python": "3.99"},
    "no interpreter yet": {"wheels": [*PURE, binary("wrapt", arch=OTHER_ARCH)], "python": "missing"},
}


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
        elif "python" in spec:  # an interpreter that says it is another version
            python = str(base / ("python-%d" % index))
            Path(python).write_text("#!/bin/sh\necho %s\n" % spec["python"])
            Path(python).chmod(0o755)
        tasks.append({"block": [
            {"name": case, "ansible.builtin.include_role": {"name": "netfabric.flannel.flannel",
                                                           "tasks_from": "preflight"},
             "vars": {"flannel_wheelhouse_dir": str(wheelhouse), "flannel_os_python": python}},
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': false}}) }}"
                                                      % json.dumps(case)}},
        ], "rescue": [
            {"ansible.builtin.set_fact": {"outcomes": "{{ outcomes | combine({%s: {'failed': true, 'msg': "
                                                      "ansible_failed_result.msg}}) }}" % json.dumps(case)}},
        ]})
    out = base / "outcomes.json"
    tasks.append({"ansible.builtin.copy": {"content": "{{ outcomes | to_json }}", "dest": str(out)}})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": True,
             "vars": {"ansible_python_interpreter": sys.executable, "outcomes": {}}, "tasks": tasks}]
    (base / "play.yml").write_text(yaml_dump(play))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(base / "play.yml")],
                          env=ansible_env(collections, base), cwd=str(base), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["matching", "pure only", "empty", "abi3 for an older python",
                                  "linux platform tag"])
def test_a_fitting_wheelhouse_passes(outcomes: Dict[str, Dict], case: str) -> None:
    assert outcomes[case] == {"failed": False}


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
