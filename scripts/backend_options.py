"""Write the backend options from the catalogue into the files that must spell them out.

    python3 scripts/backend_options.py --write    rewrite the generated blocks
    python3 scripts/backend_options.py --check    exit 1 naming every file whose block differs (a unit test)
    python3 scripts/backend_options.py --facts    print, as JSON, what each datapath leaves on a node: its link
                                                  name patterns and route protocol (molecule's switch checks)

The catalogue (plugins/module_utils/catalogue.py) is the source; the blocks between the marker lines
``# >>> backend options`` and ``# <<< backend options`` in these files are derived from it:

* plugins/modules/flannel_network.py — DOCUMENTATION, the suboptions of ``backend`` (Ansible reads
  DOCUMENTATION as a literal, so it is written here; ``ansible-test sanity`` then checks it against the
  argument spec the module builds from the catalogue at run time);
* roles/flannel/meta/argument_specs.yml — the options of ``flannel_backend`` (every entry point);
* roles/flannel/defaults/main.yml — the comment above ``flannel_backend``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
BEGIN = "# >>> backend options"
END = "# <<< backend options"
NOTE = " (written by scripts/backend_options.py from the catalogue; edit that)"


def load_catalogue():
    spec = importlib.util.spec_from_file_location("catalogue", REPO / "plugins" / "module_utils" / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CAT = load_catalogue()


def quote(text: str) -> str:
    """A YAML scalar for ``text`` (single-quoted when plain style would misread it)."""
    if re.search(r": |#|^[\[\]{}>|*&!%@`'\"-]|^\s|\s$", text) or text in ("yes", "no", "true", "false", "null"):
        return "'" + text.replace("'", "''") + "'"
    return text


def wrapped(first: str, rest: str, text: str, width: int = 112) -> List[str]:
    """``first`` + ``text`` as a YAML scalar folded over several lines, continuations at ``rest``."""
    lines = textwrap.wrap(quote(text), width=width - len(first), break_long_words=False, break_on_hyphens=False)
    return [first + lines[0]] + [rest + line for line in lines[1:]]


def type_doc() -> str:
    shown = ", ".join("V(%s)" % n for n in CAT.names())
    return "The backend type (C(Backend.Type)): %s." % shown


def _typed(indent: str, opt, spec: bool) -> List[str]:
    """type and choices; ``no_log`` too where ``spec`` (an argument spec, not module DOCUMENTATION)."""
    out = [indent + "  type: " + opt.ansible_type]
    if opt.choices:
        out.append(indent + "  choices: [%s]" % ", ".join(opt.choices))
    if opt.no_log and spec:
        out.append(indent + "  no_log: true")
    return out


def module_block(indent: str) -> List[str]:
    """The suboptions of flannel_network's ``backend`` option (descriptions as lists)."""
    out = [indent + "type:",
           indent + "  description:",
           *wrapped(indent + "    - ", indent + "      ", type_doc()),
           indent + "    - " + quote("Go flanneld's default when left out is V(udp)."),
           indent + "  type: str",
           indent + "  default: udp"]
    for name, (opt, _backends) in CAT.all_options().items():
        out += [indent + name + ":", indent + "  description:",
                *wrapped(indent + "    - ", indent + "      ", CAT.option_doc(name)), *_typed(indent, opt, False)]
    return out


def role_block(indent: str) -> List[str]:
    """The options of the flannel role's ``flannel_backend`` (one-string descriptions)."""
    out = [indent + "type:",
           *wrapped(indent + "  description: ", indent + "    ", type_doc()),
           indent + "  type: str",
           indent + "  choices: [%s]" % ", ".join(CAT.names()),
           indent + "  required: true"]
    for name, (opt, _backends) in CAT.all_options().items():
        out += [indent + name + ":", *wrapped(indent + "  description: ", indent + "    ", CAT.option_doc(name)),
                *_typed(indent, opt, True)]
    return out


def defaults_block(indent: str) -> List[str]:
    lines = ["# Backend with its options in snake_case (all of them in meta/argument_specs.yml):"]
    for backend in CAT.BACKENDS:
        opts = ", ".join(o.name for o in backend.options) or "no options"
        lines.append("#   %s: %s" % (backend.name, opts))
    return [indent + line for line in lines]


TARGETS = {
    "plugins/modules/flannel_network.py": module_block,
    "roles/flannel/meta/argument_specs.yml": role_block,
    "roles/flannel/defaults/main.yml": defaults_block,
}


def render(path: str, text: str) -> str:
    """``text`` with every generated block rewritten; the block's indent is its BEGIN marker's."""
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    found = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if line.strip().startswith(BEGIN):
            indent = line[:len(line) - len(line.lstrip())]
            out[-1] = indent + BEGIN + NOTE
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(END):
                j += 1
            if j == len(lines):
                raise SystemExit("%s: %s without %s" % (path, BEGIN, END))
            out += TARGETS[path](indent)
            out.append(lines[j])
            i = j + 1
            found += 1
            continue
        i += 1
    if not found:
        raise SystemExit("%s: no %s marker" % (path, BEGIN))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    group.add_argument("--facts", action="store_true")
    args = parser.parse_args()
    if args.facts:
        print(json.dumps({b.name: {"devices": list(b.devices), "route_proto": b.route_proto}
                          for b in CAT.BACKENDS if b.datapath}, sort_keys=True))
        return 0
    stale = []
    for rel in TARGETS:
        path = REPO / rel
        text = path.read_text()
        new = render(rel, text)
        if new != text:
            if args.write:
                path.write_text(new)
                print("catalogue: rewrote the backend options in %s" % rel)
            else:
                stale.append(rel)
    if stale:
        print("catalogue: backend options out of date in %s; run python3 scripts/backend_options.py --write"
              % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
