"""Subnet leases in etcd: acquire, renew, watch (no netlink here)."""

from pyflannel.subnet.manager import (
    Backoff,
    LeaseEvent,
    LeaseLost,
    LeaseManager,
    NoConfig,
    OutOfSubnets,
    Stopped,
    SubnetError,
    read_subnet_file,
    until_stopped,
)

__all__ = [
    "Backoff",
    "LeaseEvent",
    "LeaseLost",
    "LeaseManager",
    "NoConfig",
    "OutOfSubnets",
    "Stopped",
    "SubnetError",
    "read_subnet_file",
    "until_stopped",
]
