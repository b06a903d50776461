"""docs/agent.md against the agent: the flags table against the CLI parser, the metrics table against
every metric the agent can put on /metrics.  Either side gaining, losing or renaming a flag or a metric
fails here, naming it.

The metric names are collected twice: by running what builds them (the agent's own samples, the health
server's, and every registered backend's ``metrics()`` through the same ``backend_metrics`` /metrics
uses) and by a static scan of ``pyflannel/`` (every ``(name, "gauge"|"counter", ...)`` tuple literal and
every key a backend's ``metrics()`` spells out), so a metric emitted only in some state is not missed.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from pyflannel import backend as backends
from pyflannel import cli
from pyflannel.agent import Agent
from pyflannel.health import HealthServer, backend_metrics, metric_name
from pyflannel.netconfig import parse_config

REPO = Path(__file__).resolve().parents[2]
AGENT_MD = REPO / "docs" / "agent.md"
KINDS = ("gauge", "counter", "histogram", "summary", "untyped")
NAME = r"\bflannel_(?:[a-z0-9_]|\{[a-z0-9_]+(?:,[a-z0-9_]+)+\})+"  # a flannel_* word, {a,b} shorthand included


# -- reading the docs -------------------------------------------------------------------------------
def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next ``## ``)."""
    match = re.search(r"^## %s\n(.*?)(?=^## |\Z)" % re.escape(heading), text, re.M | re.S)
    assert match, "docs/agent.md has no section '## %s'" % heading
    return match.group(1)


def _cells(line: str) -> List[str]:
    """A Markdown table row split into its cells; a ``|`` inside backticks is text, not a border."""
    cells, cell, quoted = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            quoted = not quoted
        if char == "|" and not quoted:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    cells.append(cell.strip())
    return cells


def _rows(section: str) -> List[List[str]]:
    """The table rows of a section, without the header and the ``|---|`` line."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) > 2, "no table found"
    return [_cells(line) for line in lines[2:]]


def _ticked(cell: str) -> List[str]:
    return re.findall(r"`([^`]*)`", cell)


def _expand(name: str) -> List[str]:
    """``a_{in,out}_b`` -> ``a_in_b``, ``a_out_b`` (the shorthand the metrics table uses)."""
    match = re.search(r"\{([a-z0-9_,]+)\}", name)
    if not match:
        return [name]
    return [out for part in match.group(1).split(",")
            for out in _expand(name[:match.start()] + part + name[match.end():])]


# -- flags ------------------------------------------------------------------------------------------
def _table_flags() -> List[Tuple[List[str], str]]:
    """(flag names without dashes, default cell) for every row of the flags table."""
    out = []
    for cells in _rows(_section(AGENT_MD.read_text(), "Flags")):
        names = [t.lstrip("-") for t in _ticked(cells[0])]
        assert names and all(t.startswith("-") for t in _ticked(cells[0])), "bad flags cell: %r" % cells[0]
        out.append((names, cells[1]))
    return out


def _dashed(name: str) -> str:
    return ("-" if len(name) == 1 else "--") + name


def _shown(default: object) -> str:
    """A flag's default as the table writes it."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default)
    return str(default)


def _stated(cell: str) -> List[str]:
    """The defaults a cell states: the backticked values outside parentheses, when the cell starts with
    one (a cell in words, e.g. "the interface address", describes what an empty flag means)."""
    if not cell.startswith("`"):
        return []
    return _ticked(re.sub(r"\([^)]*\)", "", cell))


def test_every_flag_of_the_parser_is_in_the_table_and_back():
    documented = [name for names, _cell in _table_flags() for name in names]
    accepted = set(cli._BY_NAME)  # what parse_args takes, aliases (-h) included
    assert len(documented) == len(set(documented)), "a flag is listed twice in docs/agent.md"
    missing = sorted(accepted - set(documented))
    unknown = sorted(set(documented) - accepted)
    assert not missing, "flags the agent accepts but docs/agent.md does not list: %s" % ", ".join(
        _dashed(n) for n in missing)
    assert not unknown, "flags docs/agent.md lists but the agent does not accept: %s" % ", ".join(
        _dashed(n) for n in unknown)


def test_flag_defaults_in_the_table_are_the_parsers():
    problems = []
    for names, cell in _table_flags():
        flags = [cli._BY_NAME[n] for n in names if n in cli._BY_NAME]
        stated = _stated(cell)
        if not stated:
            # a cell in words (or empty) is only right for a flag whose default is empty, off or zero
            problems += ["--%s: default %r is not stated (cell %r)" % (f.name, f.default, cell)
                         for f in flags if f.default not in ("", [], False, 0, None)]
            continue
        if len(stated) not in (1, len(flags)):
            problems.append("%s: %d defaults stated for %d flags (cell %r)"
                            % (", ".join(names), len(stated), len(flags), cell))
            continue
        for i, flag in enumerate(flags):
            want = stated[i if len(stated) == len(flags) else 0]
            if want != _shown(flag.default):
                problems.append("--%s: docs/agent.md says `%s`, the parser's default is `%s`"
                                % (flag.name, want, _shown(flag.default)))
    assert not problems, "\n".join(problems)


# -- metrics: what the code emits -----------------------------------------------------------------
EXT = backends.ExternalInterface("eth0", 2, "192.0.2.10", "192.0.2.10", 1500)


def _families(samples) -> Dict[str, Tuple[str, Set[str]]]:
    """name -> (type, label names) of /metrics samples, names as render_metrics writes them."""
    out: Dict[str, Tuple[str, Set[str]]] = {}
    for sample in samples:
        name = metric_name(sample[0])
        labels = set(sample[4]) if len(sample) > 4 else set()
        kind, seen = out.setdefault(name, (sample[1], set()))
        assert kind == sample[1], "%s has two types: %s and %s" % (name, kind, sample[1])
        seen |= labels
    return out


def _merge(into: Dict[str, Tuple[str, Set[str]]], more: Dict[str, Tuple[str, Set[str]]]) -> None:
    for name, (kind, labels) in more.items():
        have = into.setdefault(name, (kind, set()))
        assert have[0] == kind, "%s has two types: %s and %s" % (name, have[0], kind)
        have[1].update(labels)


def _agent_samples() -> list:
    agent = Agent(SimpleNamespace())
    # a dual-stack lease: flannel_lease_info then carries every label it can have
    agent.lease = SimpleNamespace(subnet="10.1.2.0/24", ipv6_subnet="fc00:0:0:2::/64", reservation=False,
                                  expiration=1700000000,
                                  attrs=SimpleNamespace(public_ip="192.0.2.1", public_ipv6="fd00::1"))
    return agent._metrics()


def _health_samples() -> list:
    server = HealthServer("127.0.0.1", 0, lambda: (True, {}), lambda: True, list)
    try:
        return server.own_metrics()
    finally:
        server.httpd.server_close()


def _backend_samples() -> Iterator[Tuple[str, list]]:
    """Every registered backend, made for an IPv4 network, and the samples of its ``metrics()``."""
    for name in backends.available():
        config = parse_config(json.dumps({"Network": "10.1.0.0/16", "Backend": {"Type": name}}))
        backend = backends.create(config, EXT)
        yield name, backend_metrics(name, backend.metrics())


def emitted() -> Dict[str, Tuple[str, Set[str]]]:
    out = _families(_agent_samples())
    _merge(out, _families(_health_samples()))
    for _name, samples in _backend_samples():
        _merge(out, _families(samples))
    return out


def _static_names() -> Dict[str, str]:
    """Metric names spelled out in pyflannel/ -> where: ``(name, kind, ...)`` tuple literals anywhere,
    and the constant keys of every ``metrics()`` in pyflannel/backend/ (as /metrics names them)."""
    out: Dict[str, str] = {}
    for path in sorted((REPO / "pyflannel").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Tuple) and len(node.elts) >= 4
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts[:2])
                    and node.elts[1].value in KINDS):
                out[metric_name(node.elts[0].value)] = "%s:%d" % (rel, node.lineno)
            if (rel.startswith("pyflannel/backend/") and isinstance(node, ast.FunctionDef)
                    and node.name == "metrics"):
                keys: List[ast.AST] = []
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Dict):
                        keys += [k for k in inner.keys if k is not None]
                    elif isinstance(inner, ast.Subscript) and isinstance(inner.ctx, ast.Store):
                        keys.append(inner.slice)
                for key in keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str) and "%" not in key.value:
                        for sample in backend_metrics("?", {key.value: 0.0}):
                            out[metric_name(sample[0])] = "%s:%d" % (rel, key.lineno)
    return out


def test_the_code_scan_finds_nothing_the_running_code_does_not_emit():
    """Guards the collection above: a metric only some state emits must be made to show up there."""
    emitted_names = set(emitted())
    unseen = {name: where for name, where in _static_names().items() if name not in emitted_names}
    assert not unseen, "metrics spelled out in the code but not collected by this test: %s" % unseen


def test_every_backend_with_metrics_is_collected():
    collected = {name for name, samples in _backend_samples() if samples}
    with_metrics = {name for name, cls in backends._REGISTRY.items() if cls.metrics is not backends.Backend.metrics}
    assert with_metrics <= collected


# -- metrics: what the docs say ---------------------------------------------------------------------
def _table_metrics() -> Dict[str, Tuple[str, Set[str]]]:
    """name -> (type, labels) from the metrics table of docs/agent.md."""
    out: Dict[str, Tuple[str, Set[str]]] = {}
    for cells in _rows(_section(AGENT_MD.read_text(), "Metrics")):
        names = [n for t in _ticked(cells[0]) for n in _expand(t)]
        assert names, "a row of the metrics table names no metric: %r" % cells[0]
        assert "..." not in cells[0] and "…" not in cells[0], "spell every metric out: %r" % cells[0]
        kinds = [k.strip() for k in cells[1].split("/")]
        assert len(kinds) in (1, len(names)), "types %r for %s" % (cells[1], names)
        labels = set(_ticked(cells[2]))
        for i, name in enumerate(names):
            assert name not in out, "%s is listed twice in the metrics table" % name
            out[name] = (kinds[i if len(kinds) == len(names) else 0], labels)
    return out


def test_the_metrics_table_lists_exactly_what_the_agent_emits():
    table, code = _table_metrics(), emitted()
    undocumented = sorted(set(code) - set(table))
    gone = sorted(set(table) - set(code))
    assert not undocumented, "metrics the agent emits but docs/agent.md's table lacks: %s" % ", ".join(undocumented)
    assert not gone, "metrics docs/agent.md's table lists but the agent does not emit: %s" % ", ".join(gone)


def test_the_metrics_table_has_the_right_types_and_labels():
    table, code = _table_metrics(), emitted()
    problems = []
    for name in sorted(set(table) & set(code)):
        if table[name][0] != code[name][0]:
            problems.append("%s: the table says %s, the agent emits a %s" % (name, table[name][0], code[name][0]))
        if table[name][1] != code[name][1]:
            problems.append("%s: the table's labels %s, the agent's %s"
                            % (name, sorted(table[name][1]), sorted(code[name][1])))
    assert not problems, "\n".join(problems)


def _ansible_words() -> Set[str]:
    """flannel_* words of the Ansible side (role variables, registered names, modules, groups)."""
    words = {p.stem for p in (REPO / "plugins" / "modules").glob("*.py")}
    files = [REPO / "site.yml"]
    for top in ("roles", "playbooks", "inventory"):
        files += [p for p in (REPO / top).rglob("*") if p.suffix in (".yml", ".yaml", ".j2")]
    for path in files:
        words |= set(re.findall(r"\bflannel_[a-z0-9_]+", path.read_text()))
    return words


@pytest.mark.parametrize("doc", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_metric_names_anywhere_in_the_docs_exist(doc):
    """Any `flannel_*` name in docs/ that is no Ansible name must be a metric the agent emits."""
    code, ansible = set(emitted()), _ansible_words()
    text = (REPO / "docs" / doc).read_text()
    named = {n for t in re.findall(NAME, text) for n in _expand(t)}
    unknown = sorted(n for n in named if n not in code and n not in ansible)
    assert not unknown, "docs/%s names metrics the agent does not emit: %s" % (doc, ", ".join(unknown))
