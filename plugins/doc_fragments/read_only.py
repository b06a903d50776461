# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The check and diff mode attributes of the modules that only read (the *_info modules)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
"""
