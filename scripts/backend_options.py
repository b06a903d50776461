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
* roles/flannel/defaults/main.yml — the comment above ``flannel_backend``;
* roles/flannel/vars/main.yml — the backends that carry IPv6 and those that do not (the role's family check);
* README.md — the table of the backends (markers ``<!-- >>> backend options`` and ``<!-- <<< backend options -->``).

It also writes the options of the roles' other argument-spec entry points (``install``, ``network`` of the
flannel role, ``client_cert`` of the etcd role): each is the list of option names in :data:`ENTRY_POINTS`, and
each option is copied from the ``main`` entry point of the same file, between the marker lines
``# >>> entry point options`` and ``# <<< entry point options``. Their short descriptions stay in the file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parent.parent
BEGIN = "# >>> backend options"
END = "# <<< backend options"
NOTE = " (written by scripts/backend_options.py from the catalogue; edit that)"
EP_BEGIN = "# >>> entry point options"
EP_END = "# <<< entry point options"
EP_NOTE = " (copied from main by scripts/backend_options.py; edit main, or the names there)"

# The options of each entry point other than main: names of main's options, in main's order.
_FLANNEL_ETCD = ["flannel_etcd_endpoints", "flannel_etcd_group", "flannel_etcd_prefix", "flannel_etcd_api",
                 "flannel_etcd_tls", "flannel_etcd_pki_dir", "flannel_etcd_tls_dir", "flannel_etcd_username",
                 "flannel_etcd_password", "flannel_etcd_timeout"]
_FLANNEL_INSTALL = ["flannel_install_method", "flannel_install_dir", "flannel_install_keep_builds",
                    "flannel_source_dir", "flannel_wheelhouse_dir",
                    "flannel_wheel_python", "flannel_wheel_pip_args"]
# The etcd role's operations entry points (backup, restore, member_remove) reach a member like main does.
_ETCD_OPS = ["etcd_group", "etcd_install_method", "etcd_address", "etcd_client_port", "etcd_classic_setup", "etcd_tls",
             "etcd_tls_dir"]
ENTRY_POINTS = {
    "roles/flannel/meta/argument_specs.yml": {
        "install": [*_FLANNEL_ETCD, *_FLANNEL_INSTALL],
        "network": ["flannel_manage_network", "flannel_network", "flannel_subnet_len", "flannel_subnet_min",
                    "flannel_subnet_max", "flannel_enable_ipv4", "flannel_enable_ipv6", "flannel_enable_nftables",
                    "flannel_ipv6_network", "flannel_ipv6_subnet_len", "flannel_ipv6_subnet_min",
                    "flannel_ipv6_subnet_max", "flannel_backend", "flannel_network_force",
                    *_FLANNEL_ETCD, *_FLANNEL_INSTALL],
    },
    "roles/docker/meta/argument_specs.yml": {
        "dropin": ["docker_flannel_subnet_file", "docker_ipv6", "docker_flannel_service", "docker_ip_masq",
                   "docker_extra_args"],
    },
    "roles/etcd/meta/argument_specs.yml": {
        "client_cert": ["etcd_tls_pki_dir", "etcd_client_cert_name", "etcd_client_cert_dir", "etcd_tls_days"],
        "backup": [*_ETCD_OPS, "etcd_backup_dir", "etcd_backup_keep", "etcd_backup_tmp_dir"],
        "restore": [*_ETCD_OPS, "etcd_data_dir", "etcd_peer_port", "etcd_cluster_token", "etcd_health_timeout",
                    "etcd_restore_snapshot", "etcd_restore_confirm", "etcd_restore_force"],
        "member_remove": [*_ETCD_OPS, "etcd_remove_member"],
    },
}


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


def ipv4_only() -> List[str]:
    """Backends that carry no IPv6 (the catalogue's families)."""
    return [b.name for b in CAT.BACKENDS if 6 not in b.families]


def role_block(indent: str) -> List[str]:
    """The options of the flannel role's ``flannel_backend`` (one-string descriptions)."""
    family = " IPv4 only (no IPv6, no dual stack): %s." % ", ".join("V(%s)" % n for n in ipv4_only())
    out = [indent + "type:",
           *wrapped(indent + "  description: ", indent + "    ", type_doc() + (family if ipv4_only() else "")),
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
        lines.append("#   %s: %s%s" % (backend.name, opts, "" if 6 in backend.families else " (IPv4 only)"))
    return [indent + line for line in lines]


def readme_block(_indent: str) -> List[str]:
    """README.md's table of the backends."""
    out = ["| backend | what it is | address families | MTU overhead (IPv4 underlay) |", "|---|---|---|---|"]
    for b in CAT.BACKENDS:
        families = " + ".join("IPv%d" % f for f in b.families) if b.datapath else "(no datapath)"
        overhead = "%d bytes" % b.overhead if b.datapath else "-"
        out.append("| `%s` | %s | %s | %s |" % (b.name, b.summary, families, overhead))
    return out


def families_block(indent: str) -> List[str]:
    """The flannel role's vars: which backends carry IPv6 (its address family check names them)."""
    ipv6 = [b.name for b in CAT.BACKENDS if 6 in b.families and b.datapath]
    return [indent + "__flannel_ipv4_only_backends: [%s]" % ", ".join(ipv4_only()),
            indent + "__flannel_ipv6_backends: [%s]" % ", ".join(ipv6)]


TARGETS = {
    "plugins/modules/flannel_network.py": module_block,
    "roles/flannel/meta/argument_specs.yml": role_block,
    "roles/flannel/defaults/main.yml": defaults_block,
    "roles/flannel/vars/main.yml": families_block,
    "README.md": readme_block,
}
# Markdown has no comment lines: its markers are HTML comments.
MD_BEGIN = "<!-- >>> backend options"
MD_END = "<!-- <<< backend options"
MD_NOTE = NOTE + " -->"


def main_options(path: str, lines: List[str]) -> dict:
    """The option blocks of the ``main`` entry point of an argument_specs.yml: name -> its lines."""
    try:
        start = lines.index("  main:")
    except ValueError:
        raise SystemExit("%s: no main entry point" % path) from None
    options: dict = {}
    current = None
    inside = False
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= 2:
            break  # the next entry point
        if line == "    options:":
            inside = True
        elif inside and re.match(r"^      [a-z0-9_]+:", line):
            current = line.strip().split(":")[0]
            options[current] = [line]
        elif inside and current and (not line.strip() or line.startswith("       ")):
            options[current].append(line)
        elif inside:
            raise SystemExit("%s: cannot read main's option line %r" % (path, line))
    return options


def rewrite_blocks(path: str, text: str, begin: str, end: str, note: str, block) -> Tuple[str, int]:
    """``text`` with the lines between each ``begin`` and ``end`` marker line replaced by ``block(indent, entry)``
    (indent: the begin marker's; entry: the argument-spec entry point it stands in, if any), and how many."""
    lines = text.split("\n")
    out: List[str] = []
    entry = None
    i = 0
    found = 0
    while i < len(lines):
        line = lines[i]
        top = re.match(r"^  ([a-z0-9_]+):$", line)
        if top:
            entry = top.group(1)
        out.append(line)
        if line.strip().startswith(begin):
            indent = line[:len(line) - len(line.lstrip())]
            out[-1] = indent + begin + note
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(end):
                j += 1
            if j == len(lines):
                raise SystemExit("%s: %s without %s" % (path, begin, end))
            out += block(indent, entry)
            out.append(lines[j])
            i = j + 1
            found += 1
            continue
        i += 1
    return "\n".join(out), found


def render_entry_points(path: str, text: str) -> str:
    """``text`` with the options of every entry point of :data:`ENTRY_POINTS` copied from main."""
    options = main_options(path, text.split("\n"))
    done = set()

    def copied(_indent: str, entry) -> List[str]:
        names = ENTRY_POINTS[path].get(entry)
        if names is None:
            raise SystemExit("%s: entry point %s has markers but no list in ENTRY_POINTS" % (path, entry))
        missing = [n for n in names if n not in options]
        if missing:
            raise SystemExit("%s: entry point %s names options main does not have: %s"
                             % (path, entry, ", ".join(missing)))
        done.add(entry)
        out: List[str] = []
        for name in names:
            block = options[name]
            while block and not block[-1].strip():
                block = block[:-1]
            out += block
        return out

    new, _count = rewrite_blocks(path, text, EP_BEGIN, EP_END, EP_NOTE, copied)
    left = set(ENTRY_POINTS[path]) - done
    if left:
        raise SystemExit("%s: no %s marker in entry point(s) %s" % (path, EP_BEGIN, ", ".join(sorted(left))))
    return new


def render(path: str, text: str) -> str:
    """``text`` with every generated block rewritten; the block's indent is its BEGIN marker's."""
    begin, end, note = (MD_BEGIN, MD_END, MD_NOTE) if path.endswith(".md") else (BEGIN, END, NOTE)
    new, found = rewrite_blocks(path, text, begin, end, note, lambda indent, _entry: TARGETS[path](indent))
    if not found:
        raise SystemExit("%s: no %s marker" % (path, begin))
    return new


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
    for rel in sorted(set(TARGETS) | set(ENTRY_POINTS)):
        path = REPO / rel
        text = path.read_text()
        new = text
        # Entry points first: they copy main's flannel_backend with its backend options block.
        if rel in ENTRY_POINTS:
            new = render_entry_points(rel, new)
        if rel in TARGETS:
            new = render(rel, new)
        if new != text:
            if args.write:
                path.write_text(new)
                print("backend_options: rewrote the generated blocks in %s" % rel)
            else:
                stale.append(rel)
    if stale:
        print("backend_options: generated blocks (backend options, entry point options) out of date in %s; "
              "run python3 scripts/backend_options.py --write" % ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
