"""The ``alloc`` backend: a lease and nothing else (no device, no routes), as in Go flanneld.

It is how the control plane runs without a datapath; its lease JSON carries no BackendType.
"""

from __future__ import annotations

from pyflannel.backend import Backend, register


@register("alloc")
class AllocBackend(Backend):
    """Takes a lease; installs nothing."""
