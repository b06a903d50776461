"""What an operator following the README leaves in a checkout (an inventory, the etcd PKI with a CA private key)
is ignored by git, so it is not committed by accident.  That it stays out of the built collection is
tests/unit/test_galaxy_build.py's job."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LEFTOVERS = (
    "my-hosts.yml",
    "inventory/prod-hosts.yml",
    "etcd-pki/ca.key",
    "etcd-pki/ca.crt",
    "etcd-pki/members/node1.key",
    "inventory/etcd-pki/clients/flannel-node1.key",
)


def test_gitignore_covers_inventories_and_pki() -> None:
    # make test runs from a git checkout (CI: a clean clone); without one this check cannot be made
    assert shutil.which("git") is not None, "git is missing: run `make deps`"
    assert (REPO / ".git").exists(), "not a git checkout: run the tests from a clone of the repository"
    paths = [*LEFTOVERS, "inventory/example.yml"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-v", "-n", *paths], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    ignored = {line.split("\t", 1)[1] for line in proc.stdout.splitlines() if not line.startswith("::")}
    assert ignored == set(LEFTOVERS), proc.stdout
