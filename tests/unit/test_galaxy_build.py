"""What ships is what is listed: `ansible-galaxy collection build` of a checkout that also holds what operators
and developers leave lying around (vaults, host and group vars, inventories, keys, caches) puts only the
collection's own content into the tarball, and everything the flannel role builds the agent from.

The tree is the repository's tracked files (git ls-files) copied into a temporary directory, plus the hostile
files below.  The tarball is then installed (offline) and the agent's source imported from the installed copy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GALAXY = BIN / "ansible-galaxy"

# What an operator or a developer may leave in a checkout; none of it may reach the tarball.
HOSTILE: Dict[str, str] = {
    "group_vars/all/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n3132\n",
    "host_vars/x.yml": "ansible_become_password: hunter2\n",
    "inventory/production.yml": "all:\n  hosts:\n    node1: {ansible_host: 192.0.2.10}\n",
    "inventory/hosts": "[etcd]\nnode1\n",
    ".vault_pass": "hunter2\n",
    "etcd-pki/ca.key": "-----BEGIN EC PRIVATE KEY-----\nfake\n-----END EC PRIVATE KEY-----\n",
    "roles/etcd/files/x.key": "-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n",
    # and more of the same kind, in other places
    "inventory/staging.yml": "all: {}\n",
    "inventory/group_vars/all/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n3132\n",
    "inventory/host_vars/node1.yml": "etcd_address: 192.0.2.10\n",
    "playbooks/group_vars/all.yml": "secret: x\n",
    "playbooks/vault.yml": "$ANSIBLE_VAULT;1.1;AES256\n3132\n",
    "roles/flannel/files/client.pem": "fake\n",
    "roles/etcd/files/ca.crt": "fake\n",
    "my-hosts.yml": "all: {}\n",
    "hosts": "[etcd]\nnode1\n",
    "production.yml": "all: {}\n",
    "etcd-pki/members/node1.key": "fake\n",
    "lab/inventory/hosts.yml": "all: {}\n",
    ".venv/bin/activate": "# venv\n",
    ".ansible/collections/x": "x\n",
    "build/collections-link/x": "x\n",
    "tests/output/junit.xml": "<x/>\n",
    "molecule/default/.cache/key": "x\n",
    "pyflannel/__pycache__/cli.cpython-311.pyc": "x\n",
    "pyflannel.egg-info/PKG-INFO": "x\n",
    "docs/.notes.md": "x\n",
    "netfabric-flannel-0.0.1.tar.gz": "x\n",
}

# Every file entry of the tarball must match one of these (fnmatch: `*` spans directories).
ALLOWED = ("MANIFEST.json", "FILES.json", "README.md", "LICENSE", "LICENSE.*", "COPYING", "CHANGELOG.*",
           "meta/*.yml", "plugins/*.py", "roles/*", "playbooks/*", "site.yml", "inventory/example*.yml", "docs/*",
           "changelogs/changelog.yaml", "pyflannel/*.py", "pyproject.toml", "requirements/runtime.txt")
# Never, wherever they are.
FORBIDDEN = ("*.key", "*.pem", "*.crt", "*vault*", "*group_vars*", "*host_vars*", "*/.*", ".*", "*__pycache__*",
             "*.pyc", "*.egg-info*", "*.tar.gz")
# the role's wheel builder: its list of pyflannel's modules shared with plugins/module_utils/ (links in a
# checkout, one source for the modules and the agent; links do not ship, the builder takes module_utils')
BUILDER = REPO / "roles" / "flannel" / "files" / "build_wheelhouse.py"
_BUILD = runpy.run_path(str(BUILDER))
SHARED = _BUILD["SHARED"]


def shared_files(module_utils: Path) -> List[str]:
    """The files of the shared modules (a file or a package each), relative to ``module_utils``."""
    return [f.relative_to(module_utils).as_posix() for name in SHARED for f in _BUILD["files_of"](module_utils / name)]


# What the role needs besides pyflannel/ (flannel_source_dir is the collection root; build_wheelhouse.py)
MUST = ("MANIFEST.json", "FILES.json", "README.md", "LICENSE", "COPYING", "meta/runtime.yml", "site.yml",
        "inventory/example.yml", "changelogs/changelog.yaml", "pyproject.toml", "requirements/runtime.txt",
        "roles/flannel/files/build_wheelhouse.py")
# Tracked paths that are the collection's own content: every one of them must ship.
OWN = ("plugins/", "roles/", "playbooks/", "meta/", "docs/", "pyflannel/")


def tracked() -> List[str]:
    assert shutil.which("git") is not None, "git is missing: run `make deps`"
    assert (REPO / ".git").exists(), "not a git checkout: run the tests from a clone of the repository"
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    return [p for p in out.decode().split("\0") if p and os.path.lexists(REPO / p)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    if not GALAXY.exists():
        pytest.fail("ansible-galaxy is not in the venv: run `make venv`")
    base = tmp_path_factory.mktemp("galaxy-build")
    tree = base / "tree"
    files = tracked()
    for rel in files:
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest, follow_symlinks=False)  # links stay links, as in a checkout
    for rel, text in HOSTILE.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    dist = base / "dist"
    proc = subprocess.run([str(GALAXY), "collection", "build", "--force", "--output-path", str(dist)], cwd=tree,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = dist.glob("netfabric-flannel-*.tar.gz")
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
    return {"base": base, "tarball": tarball, "members": members, "files": files}


def test_hostile_files_stay_out(built: Dict[str, object]) -> None:
    names = set(built["members"])
    leaked = sorted(n for n in names if n.rstrip("/") in HOSTILE or any(fnmatch.fnmatch(n, p) for p in FORBIDDEN))
    assert leaked == [], "these reach the tarball: %s" % leaked
    assert not any(n.split("/")[0] in ("tests", "lab", "molecule", "bench", "scripts", "build", "etcd-pki",
                                       "group_vars", "host_vars") for n in names), sorted(names)


def test_only_listed_content_ships(built: Dict[str, object]) -> None:
    files = [m.name for m in built["members"].values() if not m.isdir()]
    unlisted = sorted(n for n in files if not any(fnmatch.fnmatch(n, p) for p in ALLOWED))
    assert unlisted == [], "not on the list of what ships (tests/unit/test_galaxy_build.py ALLOWED): %s" % unlisted
    assert "galaxy.yml" not in files  # it ships as MANIFEST.json


def test_the_agent_links_the_shared_modules() -> None:
    """One copy in a checkout: each shared module (a file or a package) under pyflannel/ is a link to
    plugins/module_utils/."""
    for name in SHARED:
        link = REPO / "pyflannel" / name
        assert link.is_symlink(), "pyflannel/%s must be a link to plugins/module_utils/%s" % (name, name)
        assert link.resolve() == (REPO / "plugins" / "module_utils" / name).resolve(), name


def test_the_collection_and_the_agent_source_ship_whole(built: Dict[str, object]) -> None:
    members = built["members"]
    missing = [n for n in MUST if n not in members]
    links = ["pyflannel/" + name for name in SHARED]
    missing += [p for p in built["files"] if p.startswith(OWN) and p not in members and p not in links]
    assert missing == [], "the tarball lacks %s" % missing
    # one copy of each shared module: in plugins/module_utils/, never a second copy under pyflannel/
    assert [p for p in members if any(p == link or p.startswith(link + "/") for link in links)] == []
    assert all("plugins/module_utils/" + name in members for name in shared_files(REPO / "plugins" / "module_utils"))


def test_the_agent_builds_from_the_installed_collection(built: Dict[str, object]) -> None:
    """Installed from the tarball, the collection root holds what the flannel role builds the wheel from
    (flannel_source_dir defaults to it): pyproject.toml and its pins, and a pyflannel/ whose wheel, built by
    the role's builder, imports whole."""
    base = built["base"]
    dest = base / "collections"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(dest), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(base / "none.cfg"), ANSIBLE_LOCAL_TEMP=str(base / "tmp"))
    (base / "none.cfg").write_text("[defaults]\n")
    proc = subprocess.run([str(GALAXY), "collection", "install", "--offline", "--no-deps", "--force", "-p", str(dest),
                           str(built["tarball"])], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = dest / "ansible_collections" / "netfabric" / "flannel"
    # the role's wheel builder on the installed copy: the wheel carries the shared modules from module_utils
    wheels = base / "wheelhouse"
    proc = subprocess.run([sys.executable, str(root / "roles" / "flannel" / "files" / "build_wheelhouse.py"),
                           "--source", str(root), "--out", str(wheels)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("pyflannel-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in shared_files(root / "plugins" / "module_utils"):
            assert zf.read("pyflannel/" + name) == (root / "plugins" / "module_utils" / name).read_bytes(), name
    # the role's own reader of the source: version, dependencies, and a pin for each in requirements/runtime.txt
    script = root / "roles" / "flannel" / "files" / "build_wheelhouse.py"
    code = ("import json, runpy, sys; from pathlib import Path; ns = runpy.run_path(sys.argv[1]); "
            "root = Path(sys.argv[2]); version, deps = ns['project_metadata'](root); "
            "pins = ns['pinned'](root / 'requirements' / 'runtime.txt', deps); "
            "import pyflannel.cli, pyflannel.agent, pyflannel.etcdstore, pyflannel.netconfig, pyflannel.leases; "
            "print(json.dumps({'version': version, 'deps': deps, 'pins': pins, "
            "'from': pyflannel.etcdstore.__file__}))")
    proc = subprocess.run([sys.executable, "-c", code, str(script), str(root)], cwd=str(base), capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ, PYTHONPATH=str(wheel)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["from"].startswith(str(wheel)), info
    assert len(info["pins"]) == len(info["deps"]) > 0, info
