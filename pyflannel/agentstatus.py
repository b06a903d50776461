"""What the agent shows the health server: the /healthz body and the /metrics samples."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

from pyflannel import __version__
from pyflannel import backend as backends
from pyflannel.health import Metric
from pyflannel.leases import Lease
from pyflannel.subnet import LeaseManager

log = logging.getLogger("pyflannel.agent")


class AgentStatus:
    """The :class:`~pyflannel.agent.Agent`'s /healthz and /metrics answers, read from its state."""

    stop: threading.Event
    ready: bool
    manager: Optional[LeaseManager]
    backend: Optional[backends.Backend]
    lease: Optional[Lease]
    leases: Dict[str, Lease]
    stats: Dict[str, int]

    def _health(self) -> Tuple[bool, Dict[str, Any]]:
        lease = self.lease
        body: Dict[str, Any] = {"version": __version__, "ready": self.ready}
        if self.manager is not None and self.manager.lease is not None:
            lease = self.manager.lease
        if lease is None or self.stop.is_set():
            body["status"] = "stopping" if self.stop.is_set() else "starting"
            return False, body
        body.update(status="ok", subnet=_text(lease.subnet), public_ip=lease.attrs.public_ip,
                    ipv6_subnet=_text(lease.ipv6_subnet), public_ipv6=lease.attrs.public_ipv6,
                    reservation=lease.reservation, lease_expiration=lease.expiration,
                    remote_leases=len(self.leases))
        if self.backend is not None:
            try:
                body["backend"] = self.backend.status()
            except Exception as err:
                body["backend"] = {"backend": self.backend.name, "error": str(err)}
        return True, body

    def _metrics(self) -> List[Metric]:
        from pyflannel.health import backend_metrics, build_info

        mgr = self.manager
        lease = mgr.lease if mgr is not None and mgr.lease is not None else self.lease
        stats = mgr.stats if mgr is not None else {}
        out: List[Metric] = [
            ("flannel_up", "gauge", "1 while the agent runs with a lease", 1.0 if lease is not None else 0.0),
            ("flannel_ready", "gauge", "1 once the subnet file is written and READY=1 sent", 1.0 if self.ready else 0),
            ("flannel_lease_expiry_timestamp_seconds", "gauge",
             "Unix time when our lease expires (+Inf for a reservation)",
             float("inf") if lease is not None and lease.reservation else float(lease.expiration or 0) if lease
             else 0.0),
            ("flannel_remote_leases", "gauge", "other nodes' leases handed to the datapath", float(len(self.leases))),
            ("flannel_lease_renewals_total", "counter", "successful lease renewals", stats.get("renewals", 0)),
            ("flannel_lease_renew_failures_total", "counter", "failed lease renewals", stats.get("renew_failures", 0)),
            ("flannel_etcd_errors_total", "counter", "failed etcd requests", stats.get("etcd_errors", 0)),
            ("flannel_lease_lost_races_total", "counter", "subnets another node created first",
             stats.get("lost_races", 0)),
            ("flannel_watch_relists_total", "counter", "full re-lists after the watch history expired",
             stats.get("watch_relists", 0)),
            ("flannel_lease_events_total", "counter", "lease events handed to the backend (the last per lease when "
             "they queue up)", self.stats["lease_events"]),
            ("flannel_iptables_repairs_total", "counter", "times missing iptables rules were restored",
             self.stats["iptables_repairs"]),
            ("flannel_subnet_file_rewrites_total", "counter", "times the subnet file had disappeared and was "
             "written again", self.stats["subnet_file_rewrites"]),
            ("flannel_leases_rejected", "gauge", "leases in etcd the validator refuses now (each logged once)",
             float(len(mgr.book.rejected)) if mgr is not None else 0.0),
            ("flannel_leases_rejected_total", "counter", "lease verdicts of refusal (new or changed reasons)",
             stats.get("leases_rejected", 0)),
            ("flannel_lease_restores_total", "counter", "times our lease was written back after etcd lost it",
             stats.get("lease_restores", 0)),
            ("flannel_etcd_state_losses_total", "counter", "times etcd was found wiped or restored (revision "
             "went back, our lease missing)", stats.get("etcd_state_losses", 0)),
        ]
        out.append(build_info(__version__, self.backend.name if self.backend is not None else ""))
        if lease is not None:
            labels = {"node": socket.gethostname(), "subnet": _text(lease.subnet),
                      "public_ip": _text(lease.attrs.public_ip)}
            if lease.ipv6_subnet is not None:
                labels.update(ipv6_subnet=str(lease.ipv6_subnet), public_ipv6=_text(lease.attrs.public_ipv6))
            out.append(("flannel_lease_info", "gauge", "this node's lease: node name, subnets and public IPs "
                        "(always 1)", 1.0, labels))
        if self.backend is not None:
            try:
                out.extend(backend_metrics(self.backend.name, self.backend.metrics()))
            except Exception as err:
                log.debug("backend metrics failed: %s", err)
        return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)
