# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""Build the pyflannel wheelhouse on the controller (used by the netfabric.flannel.flannel role).

The nodes install pyflannel with ``pip install --no-index`` from this directory, so they never need
PyPI.  The wheelhouse holds:

* ``pyflannel-<version>-py3-none-any.whl``, built from a private copy of the source (the source tree may
  be an installed, read-only collection; the modules shared with plugins/module_utils are copied as files);
* with ``--deps``: wheels of pyflannel's runtime dependencies at the versions pinned in
  ``requirements/runtime.txt`` (and whatever they need), built or downloaded once and reused;
* ``requirements.txt`` (what the node installs) and ``SHA256SUMS``;
* ``wheelhouse.tar`` (all of the above) and ``pyflannel.tar`` (only pyflannel's wheel), reproducible
  tars the role copies to the nodes in one transfer and installs when their checksum changed.

Wheels are built with a fixed SOURCE_DATE_EPOCH so an unchanged source gives a byte-identical wheel and
the role reports no change.  Prints one JSON line: {"changed": bool, "wheelhouse": dir, "version": str}.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")

# The modules pyflannel shares with the Ansible modules, in plugins/module_utils/: a file or a package (a
# directory) each. A checkout links them into pyflannel/; the collection tarball ships only
# plugins/module_utils/ (ansible-galaxy's manifest drops links), so the private copy takes them from there.
SHARED = ("catalogue.py", "etcdstore", "leasebook.py", "leases.py", "netconfig.py", "subnetenv.py")


def shared_sources(source: Path) -> list[Path]:
    """Where each shared module is read from: pyflannel/<name> (a link in a checkout), else module_utils."""
    out = []
    for name in SHARED:
        own = source / "pyflannel" / name
        util = source / "plugins" / "module_utils" / name
        if own.exists():
            out.append(own)
        elif util.exists():
            out.append(util)
        else:
            sys.exit(f"build_wheelhouse: {source} has neither pyflannel/{name} nor plugins/module_utils/{name}; "
                     "set flannel_source_dir to the collection root")
    return out


def files_of(shared: Path) -> list[Path]:
    """The files of one shared module: the module's file, or every .py file of a package, in a stable order."""
    if shared.is_dir():
        return sorted(p for p in shared.rglob("*.py") if "__pycache__" not in p.relative_to(shared).parts)
    return [shared]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_metadata(source: Path) -> tuple[str, list[str]]:
    """Version and dependency names of pyflannel from pyproject.toml (stdlib only, no tomllib needed)."""
    text = (source / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python 3.11+

        project = tomllib.loads(text)["project"]
        return project["version"], [canonical(NAME_RE.match(d).group(1)) for d in project["dependencies"]]
    except ImportError:  # pragma: no cover - older controllers
        version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.M | re.S).group(1)
        deps = [canonical(NAME_RE.match(d.strip().strip('",')).group(1)) for d in block.split(",") if d.strip()]
        return version, deps


def pinned(requirements: Path, names: list[str]) -> list[str]:
    """The lines of requirements/runtime.txt that pin one of ``names``, in file order."""
    pins = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        m = NAME_RE.match(line)
        if m and canonical(m.group(1)) in names:
            pins.append(line)
    missing = set(names) - {canonical(NAME_RE.match(p).group(1)) for p in pins}
    if missing:
        sys.exit(f"build_wheelhouse: {requirements} pins no version of {', '.join(sorted(missing))}; add a pin")
    return pins


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("*.whl"))
    }


def source_stamp(source: Path, extra: list[str]) -> str:
    """A hash of everything the wheelhouse is built from: the source files and the pins."""
    h = hashlib.sha256()
    files = [source / "pyproject.toml", source / "README.md"]
    files += sorted(p for p in (source / "pyflannel").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
                    and p.relative_to(source / "pyflannel").parts[0] not in SHARED)
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(source)).encode() + b"\0" + f.read_bytes() + b"\0")
    for shared in shared_sources(source):  # by name: a link in a checkout, module_utils in a tarball
        for f in files_of(shared):
            name = f.relative_to(shared.parent).as_posix()
            h.update(b"pyflannel/" + name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update("\n".join(extra).encode())
    return h.hexdigest()


def write_tar(target: Path, members: list[Path]) -> None:
    """A reproducible tar of ``members`` (flat, fixed owner/mode/mtime); rewritten only when it differs."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp, \
            tarfile.open(fileobj=tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in sorted(members, key=lambda p: p.name):
            info = tarfile.TarInfo(member.name)
            data = member.read_bytes()
            info.size, info.mtime, info.mode = len(data), 315532800, 0o644
            tar.addfile(info, fileobj=io.BytesIO(data))
    new = Path(tmp.name)
    new.chmod(0o644)
    if target.exists() and target.read_bytes() == new.read_bytes():
        new.unlink()
    else:
        new.replace(target)


def pip(python: str, args: list[str]) -> None:
    cmd = [python, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-6:])
        sys.exit(f"build_wheelhouse: `{' '.join(cmd)}` failed: {tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="directory with pyproject.toml and pyflannel/")
    ap.add_argument("--out", required=True, help="wheelhouse directory (created)")
    ap.add_argument("--deps", action="store_true", help="also build the pinned runtime dependencies")
    ap.add_argument("--pip-arg", action="append", default=[], help="extra argument for pip (repeatable)")
    opts = ap.parse_args()

    source = Path(opts.source).resolve()
    out = Path(opts.out)
    if not (source / "pyproject.toml").is_file() or not (source / "pyflannel" / "__init__.py").is_file():
        sys.exit(f"build_wheelhouse: {source} holds no pyflannel source (pyproject.toml, pyflannel/); "
                 "set flannel_source_dir to the collection root")
    out.mkdir(parents=True, exist_ok=True)
    # Several plays (or several ansible-playbook runs) may build into the same directory at once.
    lock = open(out / ".lock", "w")  # held until the process exits
    fcntl.flock(lock, fcntl.LOCK_EX)
    version, dep_names = project_metadata(source)
    pins = pinned(source / "requirements" / "runtime.txt", dep_names) if opts.deps else []
    stamp = source_stamp(source, [*pins, *opts.pip_arg, f"deps={opts.deps}"])
    stamp_file = out / ".source-stamp"
    if (stamp_file.exists() and stamp_file.read_text(encoding="utf-8") == stamp
            and (out / "requirements.txt").exists() and (out / "SHA256SUMS").exists()):
        print(json.dumps({"changed": False, "wheelhouse": str(out), "version": version}))
        return
    before = digest(out)
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PYTHONDONTWRITEBYTECODE="1")
    os.environ.update(env)

    with tempfile.TemporaryDirectory(prefix="pyflannel-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (source / name).exists():
                shutil.copy(source / name, copy / name)
        shutil.copytree(source / "pyflannel", copy / "pyflannel", symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        for shared in shared_sources(source):
            for f in files_of(shared):
                target = copy / "pyflannel" / f.relative_to(shared.parent)
                target.parent.mkdir(exist_ok=True)
                shutil.copy(f, target)
        built = Path(tmp) / "wheel"
        args = ["wheel", "--no-deps", "--wheel-dir", str(built), *opts.pip_arg]
        local_build = importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel")
        try:
            pip(sys.executable, [*args, "--no-build-isolation", str(copy)] if local_build else [*args, str(copy)])
        except SystemExit:
            if not local_build:
                raise
            pip(sys.executable, [*args, str(copy)])  # the local setuptools could not build it: isolated build
        for whl in built.glob("pyflannel-*.whl"):
            target = out / whl.name
            if not target.exists() or target.read_bytes() != whl.read_bytes():
                shutil.copy(whl, target)

    lines = [f"pyflannel=={version}"]
    if opts.deps:
        (out / "pins.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
        try:  # everything already there: no network at all
            pip(sys.executable, ["wheel", "--no-index", "--find-links", str(out), "--wheel-dir", str(out),
                                 "-r", str(out / "pins.txt")])
        except SystemExit:
            pip(sys.executable, ["wheel", "--prefer-binary", "--wheel-dir", str(out), *opts.pip_arg,
                                 "-r", str(out / "pins.txt")])
        lines += pins
    (out / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    after = digest(out)
    sums = "".join(f"{h}  {n}\n" for n, h in after.items()) + \
        f"{hashlib.sha256((out / 'requirements.txt').read_bytes()).hexdigest()}  requirements.txt\n"
    sums_file = out / "SHA256SUMS"
    old_sums = sums_file.read_text(encoding="utf-8") if sums_file.exists() else ""
    if sums != old_sums:
        sums_file.write_text(sums, encoding="utf-8")
    # One file per install mode for the nodes (one transfer instead of one per wheel):
    # wheelhouse.tar = everything, pyflannel.tar = only the agent's own wheel (distro mode).
    listed = [out / name for name in after]
    own = [p for p in listed if p.name.startswith("pyflannel-")]
    write_tar(out / "wheelhouse.tar", [*listed, out / "requirements.txt", sums_file])
    write_tar(out / "pyflannel.tar", [*own, out / "requirements.txt", sums_file])
    stamp_file.write_text(stamp, encoding="utf-8")
    print(json.dumps({"changed": before != after or sums != old_sums, "wheelhouse": str(out), "version": version}))


if __name__ == "__main__":
    main()
