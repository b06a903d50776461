"""The roles' argument-spec entry points other than ``main`` are copies of main's options, written by
``scripts/backend_options.py`` from its ENTRY_POINTS lists; ``--check`` (run by test_catalogue.py's
test_generated_blocks_are_current as well) fails when a copy drifts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "backend_options.py"


def _generator():
    spec = importlib.util.spec_from_file_location("backend_options", SCRIPT)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


GEN = _generator()


def test_check_passes() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_entry_point_is_main_options() -> None:
    roles = sorted((REPO / "roles").glob("*/meta/argument_specs.yml"))
    assert roles
    for path in roles:
        rel = str(path.relative_to(REPO))
        specs = yaml.safe_load(path.read_text())["argument_specs"]
        main = specs["main"]["options"]
        others = set(specs) - {"main"}
        # Every other entry point is generated: it has a list of names in the generator.
        assert others == set(GEN.ENTRY_POINTS.get(rel, {})), rel
        for entry in others:
            names = GEN.ENTRY_POINTS[rel][entry]
            assert list(specs[entry]["options"]) == names, (rel, entry)
            assert {n: main[n] for n in names} == specs[entry]["options"], (rel, entry)
            assert specs[entry]["short_description"], (rel, entry)


def test_the_generator_notices_a_stale_entry_point() -> None:
    rel = "roles/flannel/meta/argument_specs.yml"
    text = (REPO / rel).read_text()
    assert GEN.render_entry_points(rel, text) == text
    head, sep, tail = text.partition("  install:")
    # A description edited in a copy is put back from main.
    stale = head + sep + tail.replace("Seconds per etcd request", "Seconds (old text) per etcd request", 1)
    assert stale != text
    assert GEN.render_entry_points(rel, stale) == text
    # A change to main (the first entry point in the file) reaches every copy.
    old = "description: Inventory group of the etcd members"
    new = "description: The inventory group of the etcd members"
    assert text.count(old) == 3
    assert GEN.render_entry_points(rel, text.replace(old, new, 1)) == text.replace(old, new)
