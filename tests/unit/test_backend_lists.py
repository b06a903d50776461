"""Adding a backend touches its catalogue entry, its implementation, its tests and at most one verify check.

So no file names the list of backends by hand: no YAML, Jinja, Python, shell or Markdown list, regular expression
or sentence with three or more of the backend names together (``[udp, vxlan, host-gw]``, ``'^(udp|vxlan|host-gw)$'``,
``udp, vxlan, host-gw or wireguard``). Such a list is derived from ``plugins/module_utils/catalogue.py`` instead:
written by ``scripts/backend_options.py`` between its markers (``--check`` guards them), computed by Python at run
time, or worded without the names ("a backend that carries IPv6").

Allowed: the catalogue, the blocks ``scripts/backend_options.py`` writes, tests, docs/benchmarks.md (measured
results), the changelog, the cluster scenario's test plan. Everything else found is an offender.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[2]
NAMES = ("udp", "vxlan", "host-gw", "wireguard")
_NAME = "|".join(re.escape(n) for n in NAMES)
# One name, maybe quoted (`udp`, 'udp', "udp") or in an Ansible doc macro (V(udp)).
_TOKEN = r"""[`'"]?(?:V\()?(?:%s)\)?[`'"]?""" % _NAME
# What stands between two names of one list: a comma, a bar, a slash, "or"/"and", white space (shell arrays,
# prose), a new line with a YAML "- ".
_SEP = r"""(?:\s*[,|/]\s*|,?\s+(?:or|and)\s+|\s*\n\s*-\s+|\s+)"""
LIST = re.compile(r"(?<![\w.-])%s(?:%s%s){2,}(?![\w-])" % (_TOKEN, _SEP, _TOKEN))
ONE = re.compile(r"(?<![\w.-])(%s)(?![\w-])" % _NAME)

# Places where a list of the backends belongs.
ALLOWED_FILES = {
    "plugins/module_utils/catalogue.py",  # the source
    "docs/benchmarks.md",  # measured results, one row per backend
    "CHANGELOG.md",
    # the cluster scenario's test plan: the order it switches through the datapaths (test_catalogue checks that
    # it covers every datapath of the catalogue), a test like those under tests/
    "lab/run-molecule.sh",
}
ALLOWED_DIRS = ("tests/", "changelogs/")
# scripts/backend_options.py writes these blocks from the catalogue (its --check is a unit test).
GENERATED = re.compile(r"^[ \t]*(?:#|<!--) >>> backend options.*?^[ \t]*(?:#|<!--) <<< backend options", re.M | re.S)


def _files() -> Iterator[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    for rel in sorted(set(filter(None, out.split("\0")))):
        path = REPO / rel
        if rel in ALLOWED_FILES or rel.startswith(ALLOWED_DIRS) or path.is_symlink() or not path.is_file():
            continue
        yield rel


def hand_lists(text: str) -> List[Tuple[int, str]]:
    """(line, text) of every list of three or more backend names in ``text``, generated blocks left out."""
    text = GENERATED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for match in LIST.finditer(text):
        if len(set(ONE.findall(match.group(0)))) >= 3:
            shown = " ".join(match.group(0).split()).strip("`'\"()")
            found.append((text.count("\n", 0, match.start()) + 1, shown))
    return found


def test_the_pattern_finds_hand_lists() -> None:
    for text in ("choices: [udp, vxlan, host-gw]", "regex: '^(udp|vxlan|host-gw)$'", "BACKENDS = ('vxlan', 'udp',\n"
                 "    'wireguard')", "loop:\n  - udp\n  - vxlan\n  - host-gw\n", "cluster_backends=(vxlan host-gw udp)",
                 "needs udp, vxlan or host-gw", "V(udp), V(vxlan), V(wireguard)", "`udp`, `vxlan` and `host-gw`"):
        assert hand_lists(text), text
    for text in ("vxlan-direct, host-gw and udp-x", "backend: vxlan", "vxlan and host-gw carry IPv6",
                 "# >>> backend options\nchoices: [udp, vxlan, host-gw]\n# <<< backend options\n",
                 "<!-- >>> backend options -->\n| udp | vxlan | host-gw |\n<!-- <<< backend options -->\n"):
        assert not hand_lists(text), text


def test_no_file_names_the_backends_by_hand() -> None:
    offenders = []
    for rel in _files():
        try:
            text = (REPO / rel).read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        offenders += ["%s:%d: %s" % (rel, line, found) for line, found in hand_lists(text)]
    assert not offenders, (
        "backend lists written by hand (derive them from plugins/module_utils/catalogue.py, e.g. a block of "
        "scripts/backend_options.py):\n  " + "\n  ".join(offenders))
