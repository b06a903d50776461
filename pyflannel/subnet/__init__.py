"""Subnet leases in etcd: acquire, renew, watch (no netlink here)."""
