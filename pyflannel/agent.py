"""The flanneld daemon: store -> config -> interface -> backend -> lease -> datapath -> subnet.env -> READY.

Then it follows the other nodes' leases, renews its own, lets the backend repair itself and keeps the
iptables rules in place.  SIGTERM/SIGINT: clean stop (the lease and the datapath stay, so a restart
does not disturb traffic), exit 0.  Our own lease lost: exit 1, so ``Restart=on-failure`` fires.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Set

from pyflannel import __version__, etcdstore, subnetenv
from pyflannel import backend as backends
from pyflannel.agentchecks import AgentChecks
from pyflannel.agentevents import EventQueue, EventSummary, _log_some
from pyflannel.agentstart import _drop_other_mode, config_text, sd_notify
from pyflannel.agentstatus import AgentStatus
from pyflannel.etcdstore import StoreError, Unreachable
from pyflannel.health import HealthServer
from pyflannel.iface import IfaceError, select
from pyflannel.leases import Lease, printable
from pyflannel.netconfig import NetworkConfig
from pyflannel.subnet import Backoff, LeaseEvent, LeaseLost, LeaseManager, Stopped, until_stopped

# what tests and other modules import from here
__all__ = ["CONFIG_POLL", "TICK", "Agent", "EventQueue", "EventSummary", "config_text", "sd_notify"]

log = logging.getLogger("pyflannel.agent")

TICK = 5.0  # seconds between backend.tick() calls (and the checks of subnet.env and the underlay addresses)
# seconds between re-reads of <prefix>/config while running (PYFLANNEL_CONFIG_POLL: tests only)
CONFIG_POLL = float(os.environ.get("PYFLANNEL_CONFIG_POLL") or 10.0)


class Agent(AgentChecks, AgentStatus):
    """One flanneld: start-up, the main loop and the lease events; the periodic checks come from
    :class:`AgentChecks`, /healthz and /metrics from :class:`AgentStatus`."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self.stop = threading.Event()
        self.ready = False
        self.store: Optional[etcdstore.EtcdStore] = None
        self.manager: Optional[LeaseManager] = None
        self.backend: Optional[backends.Backend] = None
        self.iptables: List[Any] = []  # one IPTables (or NFTables) per address family of the network
        self.health: Optional[HealthServer] = None
        self.lease: Optional[Lease] = None
        self.events = EventQueue()  # the watch thread's lease events, coalesced per lease
        self.leases: Dict[str, Lease] = {}
        self.stats = {"lease_events": 0, "iptables_repairs": 0, "subnet_file_rewrites": 0}
        self.config: Any = None  # the network config the agent started with (and keeps)
        self.ext: Any = None  # the external interface chosen at start (iface.select)
        self.summary = EventSummary()
        self._config_note: Optional[str] = None  # the last runtime-config message logged
        self._subnet_text: Optional[str] = None  # subnet.env as written at start (rewritten if it vanishes)
        self._subnet_note: Optional[str] = None  # the last subnet.env rewrite error logged
        self._missing: Set[int] = set()  # address families whose underlay address is gone (logged once)

    # -- entry point ------------------------------------------------------------------------------
    def run(self) -> int:
        self._signals()
        log.info("pyflannel %s (flanneld) starting", __version__)
        try:
            if self.opts.healthz_port:
                self.health = HealthServer(self.opts.healthz_ip, self.opts.healthz_port, self._health,
                                           lambda: self.ready, self._metrics).start()
                log.info("serving /healthz, /readyz and /metrics on %s:%d", self.opts.healthz_ip, self.health.port)
            return self._run()
        except Stopped:
            log.info("stopped before the agent was ready")
            return 0
        except _Fatal as err:
            log.error("%s", err)
            return 1
        except OSError as err:
            log.error("%s", err)
            return 1
        except Exception as err:  # a bug: one line for the log, the traceback at debug level
            log.error("internal error: %s: %s; please report it (run with -v=1 for the traceback)",
                      type(err).__name__, err)
            log.debug("traceback", exc_info=True)
            return 1
        finally:
            if self.backend is not None:
                try:
                    self.backend.close()
                except Exception as err:
                    log.warning("closing the %s backend failed: %s", self.backend.name, err)
            if self.health is not None:
                self.health.stop()

    def _signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if not self.stop.is_set():
                log.info("received %s, shutting down (the lease is kept)", signal.Signals(signum).name)
            self.stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    # -- start-up ---------------------------------------------------------------------------------
    def _connect(self) -> etcdstore.EtcdStore:
        opts = self.opts
        backoff = Backoff()
        last = None
        while True:
            try:
                # the API probe (--etcd-api auto) may wait seconds per endpoint that drops packets: not a stop
                store = until_stopped(self.stop, functools.partial(
                    etcdstore.connect, opts.etcd_endpoints, api=opts.etcd_api, ca_cert=opts.etcd_cafile or None,
                    client_cert=opts.etcd_certfile or None, client_key=opts.etcd_keyfile or None,
                    username=opts.etcd_username or None, password=opts.etcd_password or None))
                log.info("using etcd %s API at %s", store.api, ", ".join(e.url for e in store.endpoints))
                return store
            except Unreachable as err:
                if str(err) != last:
                    log.error("%s (retrying with back-off up to 10 s)", printable(err))
                    last = str(err)
                if self.stop.wait(backoff.next()):
                    raise Stopped() from None
            except StoreError as err:
                raise _Fatal(str(err)) from None

    def _run(self) -> int:
        opts = self.opts
        try:  # before etcd, a lease, a device: a subnet file that cannot be written stops us here
            subnetenv.check_writable(opts.subnet_file)
        except OSError as err:
            raise _Fatal(str(err)) from None
        self.store = self._connect()
        self.manager = mgr = LeaseManager(self.store, opts.etcd_prefix, subnet_file=opts.subnet_file,
                                          ttl=opts.subnet_lease_ttl,
                                          renew_margin=opts.subnet_lease_renew_margin * 60.0)
        config = mgr.wait_config(self.stop)
        log.info("network config: %s", config_text(config))
        try:
            ext = select(opts.iface, opts.iface_regex, opts.iface_can_reach or None, opts.public_ip or None,
                         public_ipv6=getattr(opts, "public_ipv6", "") or None, want_ipv4=config.enable_ipv4,
                         want_ipv6=config.enable_ipv6)
        except IfaceError as err:
            raise _Fatal(str(err)) from None
        self.ext = ext
        log.info("using interface %s (index %d, address %s, public IP %s%s, MTU %d)", ext.name, ext.index,
                 ext.address, ext.public_ip,
                 ", IPv6 address %s, public IPv6 %s" % (ext.address6, ext.public_ipv6) if config.enable_ipv6 else "",
                 ext.mtu)
        try:
            backend = backends.create(config, ext, {"wireguard_key_file": getattr(opts, "wireguard_key_file", "")})
            backends.remove_leftovers(backend)
            backend.check_identity(lambda: mgr.list_leases()[0])  # a key another node's older lease holds is replaced
            attrs = backend.prepare()
        except backends.BackendError as err:
            raise _Fatal(str(err)) from None
        except StoreError as err:
            raise _Fatal("cannot list the leases in etcd: %s" % err) from None
        # the lease names the node by the addresses of the network's families only
        if not config.enable_ipv4:
            attrs.public_ip = None
        attrs.public_ipv6 = (attrs.public_ipv6 or ext.public_ipv6) if config.enable_ipv6 else None
        if not config.enable_ipv6:
            attrs.backend_v6_data = None
        self.backend = backend

        lease = mgr.acquire(attrs, self.stop)
        self.lease = lease
        config = mgr.config or config
        try:
            backend.configure(lease)
        except backends.BackendError as err:
            raise _Fatal(str(err)) from None

        self._setup_iptables(config, lease)
        self._subnet_text = subnetenv.render(config.network, lease.subnet, backend.mtu(), opts.ip_masq,
                                             ipv6_network=config.ipv6_network, ipv6_subnet=lease.ipv6_subnet)
        subnetenv.write_atomic(opts.subnet_file, self._subnet_text)
        log.info("wrote %s (subnet %s, MTU %d)", opts.subnet_file, lease.label, backend.mtu())
        self.config = config
        self.ready = True
        if sd_notify("READY=1"):
            log.info("notified systemd: READY=1")
        log.info("running with lease %s (%s)", lease.label,
                 "a reservation" if lease.reservation else "renewal at %s" % _clock(mgr.renew_at))
        return self._loop()

    def _setup_iptables(self, config: NetworkConfig, lease: Lease) -> None:
        """The masquerade and forward rules of each address family of the network: nftables tables when the
        config sets EnableNFTables (iptables is then never called), else iptables chains."""
        opts = self.opts
        families = ((4, config.network, lease.subnet), (6, config.ipv6_network, lease.ipv6_subnet))
        Rules: Any
        if getattr(config, "enable_nftables", False):
            from pyflannel.nftables import NFTables, NFTablesError, remove_table

            Rules = NFTables  # a table per family even with both flags off (empty then, as Go leaves it)
            for version, network, _subnet in families:
                if network is None:  # the family left the network: its old table must not keep rules
                    try:
                        remove_table(version)
                    except NFTablesError as err:
                        log.debug("could not look for a leftover nftables table of IPv%d: %s", version, err)
        else:
            if not (opts.ip_masq or opts.iptables_forward_rules):
                return
            try:
                from pyflannel.ipmasq import IPTables
            except ModuleNotFoundError as err:
                if err.name != "pyflannel.ipmasq":
                    raise
                if opts.ip_masq:
                    raise _Fatal("--ip-masq is not available in this pyflannel build (pyflannel.ipmasq is missing); "
                                 "run without --ip-masq or install a complete pyflannel") from None
                log.warning("--iptables-forward-rules: pyflannel.ipmasq is missing in this build, no FORWARD rules "
                            "installed; pass --iptables-forward-rules=false to silence this")
                return
            Rules = IPTables
        _drop_other_mode(bool(getattr(config, "enable_nftables", False)), families)
        for _version, network, subnet in families:
            if network is None or subnet is None:
                continue
            rules = Rules(network, subnet, opts.ip_masq, opts.iptables_forward_rules)
            try:
                rules.ensure()
            except Exception as err:
                raise _Fatal("could not install the %s rules: %s" % (rules.tool, err)) from None
            self.iptables.append(rules)

    # -- the main loop ----------------------------------------------------------------------------
    def _watch(self) -> None:
        assert self.manager is not None
        try:
            for event in self.manager.watch(self.stop):
                self.events.put(event)
        except LeaseLost as err:
            self.events.put(err)
        except Exception as err:  # unexpected: hand it to the main loop, which exits non-zero
            self.events.put(err)

    def _loop(self) -> int:
        mgr = self.manager
        backend = self.backend
        assert mgr is not None and backend is not None
        threading.Thread(target=self._watch, name="watch", daemon=True).start()
        next_tick = time.monotonic() + TICK
        next_iptables = time.monotonic() + self.opts.iptables_resync
        next_config = time.monotonic() + CONFIG_POLL
        while not self.stop.is_set():
            now = time.monotonic()
            wait = min(next_tick, next_iptables, now + 1.0) - now
            # everything the watch queued since the last pass, coalesced: the last event per lease, a
            # snapshot replacing what came before it (churn costs one datapath change per lease)
            batch = self.events.get(timeout=max(0.0, min(wait, 1.0)))
            if self.stop.is_set():
                break
            if isinstance(batch.error, LeaseLost):
                return self._lost(batch.error)
            if batch.error is not None:
                log.error("watching leases failed unexpectedly: %s: %s; exiting", type(batch.error).__name__,
                          printable(batch.error))
                return 1
            for item in batch.events:
                self._handle(item)
            self.summary.received += batch.received
            line = self.summary.line(len(self.leases))
            if line:
                log.info("%s", line)
            if mgr.renew_due():
                try:
                    self.lease = mgr.renew()
                except LeaseLost as err:
                    return self._lost(err)
                except StoreError as err:  # during an outage the etcd facade has said it once already
                    log.log(logging.DEBUG if isinstance(err, Unreachable) else logging.ERROR,
                            "failed to renew lease %s: %s; retrying in %.0f s", self.lease.label if self.lease
                            else "?", err, mgr.retry_interval())
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                try:
                    backend.check_identity(lambda: [mgr.lease, *mgr.known.values()])
                    backend.tick()
                except backends.IdentityClash as err:
                    log.error("%s", err)
                    return 1
                except Exception as err:
                    log.warning("backend %s tick failed: %s", backend.name, printable(err))
                self._check_subnet_file()
                self._check_addresses()
            if now >= next_iptables:
                next_iptables = now + self.opts.iptables_resync
                self._check_iptables()
            if now >= next_config:
                next_config = now + CONFIG_POLL
                self._check_config()
        log.info("stopped; lease %s is kept for the next start", self.lease.label if self.lease else "-")
        return 0

    def _lost(self, err: Exception) -> int:
        log.error("%s; exiting with status 1 so the service manager restarts flanneld (which takes a new lease)",
                  printable(err, 1000))
        return 1

    def _handle(self, event: LeaseEvent) -> None:
        backend = self.backend
        assert backend is not None
        self.stats["lease_events"] += 1
        try:
            if event.kind == "snapshot":
                _log_some(event.added, "is present")
                _log_some(event.removed, "is gone")
                backend.sync(list(event.leases))
                # counted once the datapath has them: flannel_remote_leases tells "peers reachable"
                self.leases = {lease.key_name: lease for lease in event.leases}
            elif event.kind == "added" and event.lease is not None:
                # one INFO line a minute sums these up (self.summary): churn must not flood the log
                log.debug("lease added: %s of %s", event.lease.label, event.lease.attrs.address)
                self.summary.count(event)
                backend.lease_added(event.lease)
                self.leases[event.lease.key_name] = event.lease
            elif event.kind == "removed" and event.lease is not None:
                self.leases.pop(event.lease.key_name, None)
                log.debug("lease removed: %s of %s", event.lease.label, event.lease.attrs.address)
                self.summary.count(event)
                backend.lease_removed(event.lease)
        except backends.BackendError as err:
            log.error("%s", printable(err))
        except Exception as err:
            log.error("backend %s failed on %s: %s: %s", backend.name, event, type(err).__name__, printable(err))


class _Fatal(Exception):
    """Start-up cannot continue; the message is one line for a person."""


def _clock(when: float) -> str:
    if when == float("inf"):
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
