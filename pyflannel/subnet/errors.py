"""The lease manager's errors: each ``str()`` is one line for a person."""

from __future__ import annotations


class SubnetError(Exception):
    """A lease problem; ``str()`` is one line for a person."""


class NoConfig(SubnetError):
    """``<prefix>/config`` does not exist."""


class OutOfSubnets(SubnetError):
    """Every subnet between SubnetMin and SubnetMax is taken."""


class LeaseLost(SubnetError):
    """Our own lease was deleted, expired or taken over by another node."""


class Stopped(Exception):
    """The stop event was set while waiting."""
