"""The udp pump's peer table and counters: :class:`State` holds the routes to the other nodes, the
subnets each of them may send from and our own subnet, as the agent's snapshots say; ``STATS`` names the
counters and lays out the shared stats region (``SLOT_SIZE`` bytes per worker).  Standard library only."""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Set, Tuple

STATS = ("packets_out", "bytes_out", "packets_in", "bytes_in", "drops_unknown_source", "drops_no_route",
         "drops_ttl", "errors", "segmented_out", "merged_in", "rx_dropped_bad_header", "rx_dropped_bad_length",
         "rx_dropped_foreign_source", "rx_dropped_foreign_destination")
# check_ingress's answers: the STATS index of the drop reason (0 = the packet may enter the TUN)
BAD_HEADER = STATS.index("rx_dropped_bad_header")
BAD_LENGTH = STATS.index("rx_dropped_bad_length")
FOREIGN_SOURCE = STATS.index("rx_dropped_foreign_source")
FOREIGN_DESTINATION = STATS.index("rx_dropped_foreign_destination")
UNKNOWN_SENDER = STATS.index("drops_unknown_source")
SLOT_SIZE = 8 * len(STATS)


class State:
    """One worker's view: ``routes`` (shifted subnet -> (PublicIP, port)), ``allowed`` (PublicIP -> the
    shifted subnets it may use as inner sources), ``own`` and the worker's ``counters`` (one per ``STATS``
    name).  :meth:`load` replaces the tables as a whole from one snapshot."""

    def __init__(self, subnet_len: int) -> None:
        self.shift = 32 - subnet_len
        self.routes: Dict[int, Tuple[str, int]] = {}
        # PublicIP -> the subnets (shifted, as in ``routes``) that sender may use as inner sources
        self.allowed: Dict[str, FrozenSet[int]] = {}
        self.own = -1  # our subnet, shifted; -1 (no lease yet) matches no packet
        self.counters: List[int] = [0] * len(STATS)

    def load(self, snapshot: dict) -> None:
        port = int(snapshot.get("port", 8285))
        routes = {int(k): (ip, port) for k, ip in snapshot.get("routes", {}).items()}
        by_ip: Dict[str, Set[int]] = {}
        for key, (ip, _port) in routes.items():
            by_ip.setdefault(ip, set()).add(key)
        own = snapshot.get("own")
        self.own = -1 if own is None else int(own)
        self.allowed = {ip: frozenset(keys) for ip, keys in by_ip.items()}
        self.routes = routes
