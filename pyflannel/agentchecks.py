"""The agent's periodic checks while it runs: the network config in etcd, the iptables rules,
subnet.env and the underlay addresses.  Each logs once per change and never stops the agent."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Set

from pyflannel import subnetenv
from pyflannel.etcdstore import StoreError
from pyflannel.iface import underlay_addresses
from pyflannel.leases import Lease
from pyflannel.netconfig import ConfigError, NetworkConfig
from pyflannel.netconfig import changes as config_changes
from pyflannel.subnet import LeaseManager, NoConfig

log = logging.getLogger("pyflannel.agent")


class AgentChecks:
    """The :class:`~pyflannel.agent.Agent`'s checks, called from its main loop."""

    opts: Any
    manager: Optional[LeaseManager]
    iptables: List[Any]
    lease: Optional[Lease]
    stats: Dict[str, int]
    config: Any
    ext: Any
    _config_note: Optional[str]
    _subnet_text: Optional[str]
    _subnet_note: Optional[str]
    _missing: Set[int]

    def _check_config(self) -> None:
        """Re-read ``<prefix>/config``; log once per change what changed and what the agent does.

        The agent keeps the config it started with (its lease, device and rules were made for it);
        restarting flanneld applies a new one, and re-checks the lease against it."""
        mgr = self.manager
        running = self.config
        if mgr is None or running is None:
            return
        try:
            new = mgr.read_config()
        except StoreError:
            return  # an outage: the etcd facade reports it
        except NoConfig:
            self._note("the network config %s was deleted from etcd; the agent keeps running with the config it "
                       "started with (%s); restore the config before restarting flanneld, or it waits for one"
                       % (mgr.config_key, _nets(running)))
            return
        except ConfigError as err:
            self._note("the network config in %s is not valid: %s; the agent keeps running with the config it "
                       "started with (%s); fix the config in etcd" % (mgr.config_key, err, _nets(running)))
            return
        restart, limits = config_changes(running, new, values=True)
        if restart:
            self._note("the network config in %s changed (%s); the agent keeps running with the config it started "
                       "with; restart flanneld to apply it (the lease is re-checked against the new config at start)"
                       % (mgr.config_key, ", ".join(restart)))
            return
        if limits:
            self._note("the network config in %s changed (%s); this only matters for new leases, the agent keeps "
                       "its lease %s" % (mgr.config_key, ", ".join(limits),
                                         self.lease.label if self.lease else "-"), level=logging.INFO)
            return
        if self._config_note is not None:
            log.info("the network config in %s matches the running config again", mgr.config_key)
            self._config_note = None

    def _note(self, msg: str, level: int = logging.WARNING) -> None:
        if msg != self._config_note:
            log.log(level, "%s", msg)
            self._config_note = msg

    def _check_iptables(self) -> None:
        for rules in self.iptables:
            try:
                if rules.ensure():
                    self.stats["iptables_repairs"] += 1
                    log.info("%s rules were missing and have been restored", rules.tool)
            except Exception as err:
                log.error("checking the %s rules failed: %s", rules.tool, err)

    def _check_subnet_file(self) -> None:
        """Write subnet.env again when it disappeared (a cleaned /run, an operator's rm): docker and
        mk-docker-opts read it at their next start.  One line when it is rewritten, one per new error."""
        path = self.opts.subnet_file
        if self._subnet_text is None or os.path.exists(path):
            return
        try:
            subnetenv.write_atomic(path, self._subnet_text)
        except OSError as err:
            note = "%s is gone and cannot be written again: %s; docker cannot read this node's subnet until it is " \
                   "back (fix the directory, or restart flanneld)" % (path, err.strerror or err)
            if note != self._subnet_note:
                log.error("%s", note)
                self._subnet_note = note
            return
        self._subnet_note = None
        self.stats["subnet_file_rewrites"] += 1
        log.warning("%s had disappeared: wrote it again (subnet %s)", path, self.lease.label if self.lease else "-")

    def _check_addresses(self) -> None:
        """Log once when an underlay address the agent started with leaves its interface (WARNING: other
        nodes reach this one at it), and once when it is back (INFO)."""
        ext, config = self.ext, self.config
        if ext is None or config is None:
            return
        wanted = []
        if config.enable_ipv4 and ext.address:
            wanted.append((4, ext.address, ext.public_ip))
        if config.enable_ipv6 and ext.address6:
            wanted.append((6, ext.address6, ext.public_ipv6))
        if not wanted:
            return
        try:
            present = dict(zip((4, 6), underlay_addresses(ext.index)))
        except Exception as err:
            log.debug("could not read the addresses of %s: %s", ext.name, err)
            return
        for family, address, public in wanted:
            here = address in present[family]
            if not here and family not in self._missing:
                self._missing.add(family)
                log.warning("the IPv%d address %s is gone from %s: other nodes reach this one at %s (its lease), so "
                            "traffic over IPv%d to and from them fails until it is back; put the address back, or "
                            "restart flanneld to choose another", family, address, ext.name, public or address,
                            family)
            elif here and family in self._missing:
                self._missing.discard(family)
                log.info("the IPv%d address %s is back on %s", family, address, ext.name)


def _nets(config: NetworkConfig) -> str:
    return " ".join(str(pool.network) for pool in config.pools())
