"""host-gw backend: a plain route ``<subnet> via <PublicIP> dev <iface>`` per remote host-gw lease.

Works only when every node shares one L2 segment on the external interface: the next hop must be
on-link.  A lease whose PublicIP is not gets one clear log line (naming the lease, the next hop and
the fix) instead of a kernel "network is unreachable"; ``tick()`` retries and repairs missing routes.
The wanted routes and their reconcile loop live in :class:`~pyflannel.backend.routes.RouteBackend`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from pyflannel.backend import BackendError, ExternalInterface, register
from pyflannel.backend.routes import Hop, RouteBackend
from pyflannel.leases import Lease


@register("host-gw")
class HostGwBackend(RouteBackend):
    offlink_advice = ("host-gw needs every node on one L2 segment: put the nodes on the same segment, choose the "
                      "interface that shares one with --iface, or use the vxlan backend")

    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        if ext_iface.public_ip != ext_iface.address:
            raise BackendError(
                "host-gw cannot work behind NAT: the public IP %s is not the address %s of interface %s; other "
                "nodes route straight to the public IP, so drop --public-ip, pick the interface holding it with "
                "--iface, or use the vxlan backend" % (ext_iface.public_ip, ext_iface.address, ext_iface.name))

    def hop_for(self, lease: Lease) -> Optional[Hop]:
        if not self.is_remote(lease):
            return None
        return Hop(lease.subnet, lease.attrs.public_ip, self.ext_iface.index)
