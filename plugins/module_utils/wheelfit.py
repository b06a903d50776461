# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which wheel files an interpreter on a node accepts (flannel_node_info's ``wheels``): the tags it supports,
asked of the interpreter itself (``packaging.tags.sys_tags()``), compared with the tags in the file names."""

from __future__ import annotations

import json
import os
import re
import sys

# Run by the interpreter whose wheel tags are wanted: packaging.tags, else pip's vendored copy, else that of
# the pip wheel the interpreter's venv module would install (ensurepip's own, or the distribution's copy such as
# Debian's /usr/share/python-wheels); "tags": null when none of them is there (a node without pip or venv yet).
TAGS_PROBE = r"""
import glob, json, os, platform, sys
out = {"python": "%d.%d" % sys.version_info[:2], "architecture": platform.machine(),
       "implementation": sys.implementation.name, "tags": None, "method": "none"}
def tags(method):
    out["tags"] = [str(t) for t in sys_tags()]
    out["method"] = method
try:
    from packaging.tags import sys_tags
    tags("packaging")
except ImportError:
    try:
        from pip._vendor.packaging.tags import sys_tags
        tags("pip")
    except ImportError:
        try:
            import ensurepip
            places = [os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
        except ImportError:
            places = []
        places += ["/usr/share/python-wheels", "/usr/share/python%d-wheels" % sys.version_info[0]]
        for wheel in sorted(w for p in places for w in glob.glob(os.path.join(p, "pip-*.whl")))[-1:]:
            sys.path.insert(0, wheel)
            try:
                from pip._vendor.packaging.tags import sys_tags
                tags("pip wheel " + wheel)
            except ImportError:
                pass
print(json.dumps(out))
"""

PLATFORM_PREFIX = re.compile(r"^(many|musl)?linux(\d+|_\d+_\d+)?_")


def wheel_tags(filename):
    """The set of ``python-abi-platform`` tags a wheel file name declares (each part may be a dotted set), or
    None when the name is not a wheel's."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):  # name-version[-build]-python-abi-platform
        return None
    pythons, abis, platforms = (p.split(".") for p in parts[-3:])
    return set("%s-%s-%s" % (p, a, pl) for p in pythons for a in abis for pl in platforms)


def basic_fit(triple, probe):
    """Without packaging on the node: whether one (python, abi, platform) tag fits CPython X.Y on the probe's
    architecture - the python tag (pyX, pyXN or cpXN with N <= Y; cpXY for its own ABI), abi3 for cpXN with
    N <= Y, and a platform tag of ``any`` or of that architecture (glibc or musl versions are not judged)."""
    py, abi, plat = triple.split("-")
    major, minor = (int(n) for n in probe["python"].split("."))
    if plat != "any" and PLATFORM_PREFIX.sub("", plat) != probe["architecture"]:
        return False
    found = re.match(r"^(py|cp)(\d)(\d*)$", py)
    if not found or int(found.group(2)) != major:
        return False
    kind, older = found.group(1), not found.group(3) or int(found.group(3)) <= minor
    own = found.group(3) == str(minor)
    if abi == "none":
        return older if kind == "py" else own
    if abi == "abi3":
        return kind == "cp" and older and plat != "any"
    return kind == "cp" and own and abi.startswith(py) and probe.get("implementation", "cpython") == "cpython"


def wheel_fit(module, wheels, python):
    interpreter = python if python and os.path.exists(python) else sys.executable
    rc, out, err = module.run_command([interpreter, "-c", TAGS_PROBE])
    try:
        probe = json.loads(out.strip().splitlines()[-1]) if rc == 0 and out.strip() else {}
    except ValueError:
        probe = {}
    if not re.match(r"^\d+\.\d+$", str(probe.get("python", ""))) or not probe.get("architecture"):
        detail = " ".join((err or out or "exit status %d" % rc).split())
        module.fail_json(msg="cannot tell which wheels %s accepts: it did not answer the tag probe (%s)"
                             % (interpreter, detail[:300]))
    supported = set(probe["tags"]) if probe.get("tags") is not None else None
    misfits = []
    for name in wheels:
        tags = wheel_tags(name) or set()
        fits = tags & supported if supported is not None else any(basic_fit(tag, probe) for tag in tags)
        if not fits:
            misfits.append(name)
    pythons, platforms = [], []
    for name in misfits:
        parts = name[:-len(".whl")].split("-") if name.endswith(".whl") else []
        if len(parts) >= 5:
            pythons.append(parts[-3])
            platforms += [PLATFORM_PREFIX.sub("", p) for p in parts[-1].split(".")]
    return {"interpreter": interpreter, "python": probe["python"], "architecture": probe["architecture"],
            "method": probe.get("method") if supported is not None else "basic",
            "misfits": misfits, "misfit_pythons": _unique(pythons), "misfit_platforms": _unique(platforms)}


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
