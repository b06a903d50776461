"""Operators' inventories and the etcd PKI never end up in the built collection (galaxy.yml build_ignore).

Builds the collection with `ansible-galaxy collection build` from a copy of the tree that also holds what an
operator following the README leaves in a checkout: an inventory (my-hosts.yml, inventory/prod-hosts.yml) and
an etcd PKI directory with a CA private key (the pre-1.0 default location, <inventory dir>/etcd-pki).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GALAXY = Path(sys.executable).parent / "ansible-galaxy"
# Not needed for the build, large or volatile: left out of the copy.
SKIP = {".venv", ".git", "build", ".pytest_cache", ".ruff_cache", ".hypothesis", ".ansible", "__pycache__",
        "tests/output", "lab/.cache"}

LEFTOVERS = {
    "my-hosts.yml": "all:\n  hosts:\n    node1:\n      ansible_host: 192.0.2.10\n",
    "inventory/prod-hosts.yml": "all:\n  hosts:\n    node1: {}\n",
    "etcd-pki/ca.key": "-----BEGIN EC PRIVATE KEY-----\nfake\n-----END EC PRIVATE KEY-----\n",
    "etcd-pki/ca.crt": "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n",
    "etcd-pki/members/node1.key": "fake\n",
    "inventory/etcd-pki/clients/flannel-node1.key": "fake\n",
}


def _ignore(directory: str, names: list) -> set:
    rel = Path(directory).resolve().relative_to(REPO.resolve())
    return {n for n in names if n in SKIP or str(rel / n) in SKIP or n.endswith((".egg-info", ".tar.gz"))}


@pytest.mark.skipif(not GALAXY.exists(), reason="ansible-galaxy not in the venv")
def test_inventories_and_pki_stay_out_of_the_tarball(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, symlinks=True, ignore=_ignore)
    for rel, text in LEFTOVERS.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    out = tmp_path / "dist"
    proc = subprocess.run([str(GALAXY), "collection", "build", "--force", "--output-path", str(out)], cwd=tree,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = out.glob("netfabric-flannel-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert "galaxy.yml" not in names  # sanity: the tarball has MANIFEST.json instead
    assert "MANIFEST.json" in names and "inventory/example.yml" in names
    leaked = sorted(n for n in names
                    if n in LEFTOVERS or "etcd-pki" in n.split("/") or n.endswith(".key"))
    assert leaked == [], "galaxy.yml build_ignore lets these into the tarball: %s" % leaked


def test_gitignore_covers_inventories_and_pki() -> None:
    # make test runs from a git checkout (CI: a clean clone); without one this check cannot be made
    assert shutil.which("git") is not None, "git is missing: run `make deps`"
    assert (REPO / ".git").exists(), "not a git checkout: run the tests from a clone of the repository"
    paths = [*LEFTOVERS, "inventory/example.yml"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-v", "-n", *paths], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    ignored = {line.split("\t", 1)[1] for line in proc.stdout.splitlines() if not line.startswith("::")}
    assert ignored == set(LEFTOVERS), proc.stdout
