"""`make collection-build`: build the collection tarball, install it, and run its modules against a real etcd.

1. `ansible-galaxy collection build` into build/dist/ (galaxy.yml's manifest lists what ships);
2. the tarball must not carry development leftovers, and must carry the modules, roles and pyflannel;
3. `ansible-galaxy collection install --no-deps` of the tarball into a fresh directory (offline: Galaxy is not
   asked for community.crypto);
4. from that installed copy only, flannel_network writes a config and flannel_lease_info reads it back,
   against a real etcd (testbed/etcdserver.py) on loopback; etcd's content is checked directly.

Prints one line per step and exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.etcdserver import EtcdServer  # noqa: E402

VENV_BIN = Path(sys.executable).parent
DIST = REPO / "build" / "dist"
# What must never end up in the tarball: top-level paths, and directory names anywhere.
FORBIDDEN_TOP = (".venv", ".git", ".ansible", ".ci", "build", "tests/output", "lab/.cache")
FORBIDDEN_ANYWHERE = (".pytest_cache", ".ruff_cache", ".hypothesis", "__pycache__")
REQUIRED = ("MANIFEST.json", "FILES.json", "meta/runtime.yml", "plugins/modules/flannel_network.py",
            "plugins/modules/flannel_lease.py", "plugins/modules/flannel_lease_info.py",
            "plugins/module_utils/netconfig.py", "plugins/module_utils/etcdstore/__init__.py",
            "plugins/module_utils/leases.py", "plugins/module_utils/catalogue.py", "plugins/doc_fragments/etcd.py",
            "pyflannel/agent.py", "pyflannel/__init__.py", "pyproject.toml", "requirements/runtime.txt",
            "roles/flannel/files/build_wheelhouse.py", "inventory/example.yml")
# the modules pyflannel shares with plugins/module_utils: the role's wheel builder's list
SHARED = runpy.run_path(str(REPO / "roles" / "flannel" / "files" / "build_wheelhouse.py"))["SHARED"]


def fail(msg: str) -> None:
    print("collection-build: FAILED: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def run(cmd: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=str(cwd) if cwd else None, capture_output=True,
                          text=True, timeout=300, check=False)
    if proc.returncode != 0:
        fail("%s exited %d:\n%s\n%s" % (" ".join(str(c) for c in cmd[:4]), proc.returncode, proc.stdout[-3000:],
                                        proc.stderr[-3000:]))
    return proc


def build() -> Path:
    DIST.mkdir(parents=True, exist_ok=True)
    for old in DIST.glob("netfabric-flannel-*.tar.gz"):
        old.unlink()
    started = time.monotonic()
    run([VENV_BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", DIST], cwd=REPO)
    tarballs = sorted(DIST.glob("netfabric-flannel-*.tar.gz"))
    if len(tarballs) != 1:
        fail("expected one tarball in %s, found %s" % (DIST, [t.name for t in tarballs]))
    tarball = tarballs[0]
    size = tarball.stat().st_size // 1024
    elapsed = time.monotonic() - started
    print("collection-build: built %s (%d KiB) in %.1f s" % (tarball.relative_to(REPO), size, elapsed))
    return tarball


def check_contents(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        members = {m.name: m for m in tar.getmembers()}
    bad = [n for n in names
           if any(n == top or n.startswith(top + "/") for top in FORBIDDEN_TOP)
           or any(part in FORBIDDEN_ANYWHERE or part.endswith((".egg-info", ".pyc", ".tar.gz"))
                  for part in n.split("/"))]
    if bad:
        fail("the tarball carries development leftovers; galaxy.yml's manifest must not list them: %s" % bad[:10])
    missing = [n for n in REQUIRED if n not in members]
    if missing:
        fail("the tarball lacks %s" % missing)
    print("collection-build: tarball holds %d entries, none of %s, caches or build output"
          % (len(names), ", ".join(FORBIDDEN_TOP[:4])))


def install(tarball: Path, dest: Path, env: dict) -> Path:
    # --force: a netfabric.flannel elsewhere on the collections path must not make this a no-op
    # --no-deps: galaxy.yml's community.crypto would send the resolver to Galaxy (unreachable offline)
    run([VENV_BIN / "ansible-galaxy", "collection", "install", "--offline", "--no-deps", "--force", "-p", dest,
         tarball], env=env)
    root = dest / "ansible_collections" / "netfabric" / "flannel"
    manifest = json.loads((root / "MANIFEST.json").read_text())
    version = manifest["collection_info"]["version"]
    # pyflannel's shared modules are links to module_utils in a checkout; the tarball ships module_utils only
    # (links do not ship) and the role's wheel builder takes them from there: one copy each, never a second
    for name in SHARED:
        if (root / "pyflannel" / name).exists():
            fail("installed pyflannel/%s is a second copy of plugins/module_utils/%s" % (name, name))
        if not (root / "plugins" / "module_utils" / name).exists():
            fail("installed plugins/module_utils/%s is missing" % name)
    print("collection-build: installed netfabric.flannel %s into %s" % (version, dest))
    return root


def ansible_env(dest: Path, work: Path) -> dict:
    """Only the installed copy is on the collections path; no ansible.cfg of the checkout applies."""
    env = dict(os.environ)
    env.update(ANSIBLE_COLLECTIONS_PATH=str(dest), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(work / "tmp"), ANSIBLE_CONFIG=str(work / "none.cfg"),
               PATH=str(VENV_BIN) + os.pathsep + env.get("PATH", ""))
    return env


def run_modules(dest: Path, work: Path, env: dict) -> None:
    base = ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable]
    doc = run([VENV_BIN / "ansible-doc", "--json", "netfabric.flannel.flannel_network"], env=env, cwd=work)
    where = json.loads(doc.stdout)["netfabric.flannel.flannel_network"]["doc"]["filename"]
    if not where.startswith(str(dest)):
        fail("flannel_network was loaded from %s, not from the installed collection in %s" % (where, dest))
    with EtcdServer() as server:
        prefix = "/collection-build/coreos.com/network"
        conn = {"endpoints": [server.url], "prefix": prefix, "api": "v3"}
        args = dict(conn, network="10.123.0.0/16", subnet_len=25, backend={"type": "vxlan", "vni": 7})
        started = time.monotonic()
        out = run([VENV_BIN / "ansible", "localhost", *base, "-m", "netfabric.flannel.flannel_network",
                   "-a", json.dumps(args)], env=env, cwd=work).stdout
        if "CHANGED" not in out:
            fail("flannel_network did not report a change:\n" + out)
        info = run([VENV_BIN / "ansible", "localhost", *base, "-m", "netfabric.flannel.flannel_lease_info",
                    "-a", json.dumps(conn)], env=env, cwd=work).stdout
        if '"SubnetLen": 25' not in info or '"leases": []' not in info:
            fail("flannel_lease_info did not read the config back:\n" + info)
        elapsed = time.monotonic() - started
        from plugins.module_utils.etcdstore import connect

        store = connect([server.url], api="v3")
        kv = store.get(prefix + "/config")
        want = {"Network": "10.123.0.0/16", "SubnetLen": 25, "Backend": {"Type": "vxlan", "VNI": 7}}
        if kv is None or json.loads(kv.value) != want:
            fail("etcd holds %r at %s/config, expected %r" % (kv and kv.value, prefix, want))
    print("collection-build: installed flannel_network wrote %s/config and flannel_lease_info read it back "
          "from a real etcd (%.1f s for both runs)" % (prefix, elapsed))


def main() -> None:
    tarball = build()
    check_contents(tarball)
    with tempfile.TemporaryDirectory(prefix="netfabric-install-") as tmp:
        work = Path(tmp)
        (work / "tmp").mkdir()
        (work / "none.cfg").write_text("[defaults]\n")
        dest = work / "collections"
        env = ansible_env(dest, work)
        install(tarball, dest, env)
        run_modules(dest, work, env)
    print("collection-build: OK")


if __name__ == "__main__":
    main()
