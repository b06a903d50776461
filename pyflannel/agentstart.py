"""Start-up helpers of the agent: telling systemd it is ready, clearing the rules an earlier
iptables/nftables mode left, and the network config as the log shows it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from typing import Any

from pyflannel import catalogue

log = logging.getLogger("pyflannel.agent")


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1") to systemd's NOTIFY_SOCKET; no-op (False) when it is unset."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode("utf-8"))
    except OSError as err:
        log.warning("could not notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), err)
        return False
    return True


def _drop_other_mode(nftables: bool, families: Any) -> None:
    """A switch of EnableNFTables leaves the previous mode's rules behind: in nftables mode our own iptables
    chains (FLANNEL-POSTRTG, FLANNEL-FWD and the jumps to them), in iptables mode our nftables tables
    (flannel-ipv4, flannel-ipv6), each only where its tool is installed.  Nothing else is touched; a failure
    is logged at debug level and does not stop the agent."""
    if nftables:
        from pyflannel.ipmasq import IPTables

        for version, network, subnet in families:
            tool = "iptables" if version == 4 else "ip6tables"
            if network is None or subnet is None or not shutil.which(tool + "-save"):
                continue
            try:
                if IPTables(network, subnet, True, True).remove():
                    log.info("EnableNFTables is on: removed the %s rules an earlier iptables mode left", tool)
            except Exception as err:
                log.debug("could not look for leftover %s rules: %s", tool, err)
        return
    if not shutil.which("nft"):
        return
    from pyflannel.nftables import remove_table

    for version in (4, 6):
        try:
            remove_table(version)  # logs the table it deletes
        except Exception as err:
            log.debug("could not look for a leftover nftables table of IPv%d: %s", version, err)


def config_text(config: Any) -> str:
    """A network config (NetworkConfig or dict) as JSON for the log, secrets hidden by the catalogue's
    ``no_log`` (the one redactor the modules use too)."""
    data = config.to_dict(defaults=False) if hasattr(config, "to_dict") else config
    return json.dumps(catalogue.redact(data), separators=(",", ":"))
