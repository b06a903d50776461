"""Make this checkout importable as ``ansible_collections.netfabric.flannel`` for the plugin unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "build" / "pytest-collections"
LINK = BASE / "ansible_collections" / "netfabric" / "flannel"

if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    LINK.symlink_to(REPO, target_is_directory=True)
if str(BASE) not in sys.path:
    sys.path.insert(0, str(BASE))
