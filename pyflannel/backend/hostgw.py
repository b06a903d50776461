"""host-gw backend: a plain route ``<subnet> via <PublicIP> dev <iface>`` per remote host-gw lease, and on a
network with IPv6 ``<IPv6 subnet> via <PublicIPv6> dev <iface>`` for a lease with an IPv6 subnet (an
IPv6-only network gets the IPv6 routes alone).

Works only when every node shares one L2 segment on the external interface: the next hop must be
on-link (IPv4 and IPv6 alike).  A lease whose PublicIP/PublicIPv6 is not gets one clear log line (naming
the lease, the next hop and the fix) instead of a kernel "network is unreachable"; ``tick()`` retries
when the interface's subnets change and repairs missing routes.  The wanted routes and their reconcile
loop live in :class:`~pyflannel.backend.routes.RouteBackend`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional

from pyflannel.backend import BackendError, ExternalInterface, register
from pyflannel.backend.routes import Hop, RouteBackend, usable_ipv6_peer
from pyflannel.leases import Lease


def _same_ip(a: Optional[str], b: Optional[str]) -> bool:
    if a is None or b is None:
        return a is b
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


@register("host-gw")
class HostGwBackend(RouteBackend):
    offlink_advice = ("host-gw needs every node on one L2 segment: put the nodes on the same segment, choose the "
                      "interface that shares one with --iface, or use the vxlan backend")

    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        if self.enable_ipv4 and not _same_ip(ext_iface.public_ip, ext_iface.address):
            raise BackendError(
                "host-gw cannot work behind NAT: the public IP %s is not the address %s of interface %s; other "
                "nodes route straight to the public IP, so drop --public-ip, pick the interface holding it with "
                "--iface, or use the vxlan backend" % (ext_iface.public_ip, ext_iface.address, ext_iface.name))
        if self.enable_ipv6:
            if not ext_iface.public_ipv6:
                raise BackendError(
                    "host-gw on a network with IPv6 needs an IPv6 address on interface %s (none found); give the "
                    "interface a global IPv6 address, pick one that has it with --iface, or set EnableIPv6 to "
                    "false" % ext_iface.name)
            if not _same_ip(ext_iface.public_ipv6, ext_iface.address6):
                raise BackendError(
                    "host-gw cannot work behind NAT: the public IPv6 %s is not the address %s of interface %s; "
                    "other nodes route straight to the public IPv6, so drop --public-ipv6, pick the interface "
                    "holding it with --iface, or use the vxlan backend"
                    % (ext_iface.public_ipv6, ext_iface.address6 or "(none)", ext_iface.name))

    def hops_for(self, lease: Lease) -> List[Hop]:
        if not self.is_remote(lease):
            return []
        hops = []
        attrs = lease.attrs
        if self.enable_ipv4 and lease.subnet is not None and attrs.public_ip:
            hops.append(Hop(lease.subnet, attrs.public_ip, self.ext_iface.index))
        if self.enable_ipv6 and lease.ipv6_subnet is not None and usable_ipv6_peer(attrs.public_ipv6):
            hops.append(Hop(lease.ipv6_subnet, attrs.public_ipv6, self.ext_iface.index))
        return hops
