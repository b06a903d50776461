"""The flanneld daemon: store -> config -> interface -> backend -> lease -> datapath -> subnet.env -> READY.

Then it follows the other nodes' leases, renews its own, lets the backend repair itself and keeps the
iptables rules in place.  SIGTERM/SIGINT: clean stop (the lease and the datapath stay, so a restart
does not disturb traffic), exit 0.  Our own lease lost: exit 1, so ``Restart=on-failure`` fires.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from pyflannel import __version__, catalogue, etcdstore, subnetenv
from pyflannel import backend as backends
from pyflannel.etcdstore import StoreError, Unreachable
from pyflannel.health import HealthServer, Metric
from pyflannel.iface import IfaceError, select, underlay_addresses
from pyflannel.leases import Lease, printable
from pyflannel.netconfig import ConfigError, NetworkConfig
from pyflannel.netconfig import changes as config_changes
from pyflannel.subnet import Backoff, LeaseEvent, LeaseLost, LeaseManager, NoConfig, Stopped, until_stopped

log = logging.getLogger("pyflannel.agent")

TICK = 5.0  # seconds between backend.tick() calls (and the checks of subnet.env and the underlay addresses)
SUMMARY_INTERVAL = 60.0  # seconds: at most one INFO line about lease events per interval
# seconds between re-reads of <prefix>/config while running (PYFLANNEL_CONFIG_POLL: tests only)
CONFIG_POLL = float(os.environ.get("PYFLANNEL_CONFIG_POLL") or 10.0)


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


class Agent:
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

    # -- observability ----------------------------------------------------------------------------
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


SNAPSHOT_LOG_LINES = 10  # leases named one by one in a snapshot's log; the rest are counted


def _log_some(leases: List[Lease], what: str) -> None:
    """One line per lease for the first few, then one line with the count (thousands of peers)."""
    for lease in leases[:SNAPSHOT_LOG_LINES]:
        log.info("lease %s of %s %s", lease.label, lease.attrs.address, what)
    if len(leases) > SNAPSHOT_LOG_LINES:
        log.info("... and %d more leases %s", len(leases) - SNAPSHOT_LOG_LINES, what)


class Batch:
    """What :meth:`EventQueue.get` hands the main loop: ``events`` in order (a snapshot first if one
    came), ``error`` the watch's exception if it raised, ``received`` how many added/removed events the
    watch delivered for them (before coalescing)."""

    __slots__ = ("events", "error", "received")

    def __init__(self, events: List[LeaseEvent], error: Optional[BaseException], received: int) -> None:
        self.events = events
        self.error = error
        self.received = received


class EventQueue:
    """The watch thread's lease events for the main loop, coalesced as they arrive.

    Per lease key only the last event is kept (a lease added and removed ten times while the datapath
    was busy costs one change), and a snapshot replaces everything queued before it (it holds the whole
    truth).  What waits is bounded by the number of leases, not by the rate of churn, so the agent is
    caught up one pass after churn ends."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._snapshot: Optional[LeaseEvent] = None
        self._events: Dict[str, LeaseEvent] = {}  # key name -> last event, in order of arrival
        self._error: Optional[BaseException] = None
        self._received = 0

    def put(self, item: Union[LeaseEvent, BaseException]) -> None:
        with self._cond:
            if isinstance(item, LeaseEvent):
                if item.kind == "snapshot":
                    self._snapshot = item
                    self._events.clear()
                elif item.lease is not None:
                    self._received += 1
                    key = item.lease.key_name
                    self._events.pop(key, None)  # re-inserted: the order is that of the last events
                    self._events[key] = item
            elif self._error is None:
                self._error = item
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._events) + (self._snapshot is not None) + (self._error is not None)

    def get(self, timeout: Optional[float] = None) -> Batch:
        """Everything queued, at once; waits up to ``timeout`` seconds for something (an empty batch then)."""
        with self._cond:
            if not (self._snapshot or self._events or self._error):
                self._cond.wait(timeout)
            events = ([self._snapshot] if self._snapshot is not None else []) + list(self._events.values())
            batch = Batch(events, self._error, self._received)
            self._snapshot, self._events, self._error, self._received = None, {}, None, 0
            return batch


class EventSummary:
    """Lease events summed up in one INFO line at most every :data:`SUMMARY_INTERVAL` seconds, e.g.
    ``lease events in the last 60 s: 312 added, 298 removed (from 1840 watch events); 41 remote leases
    now``; the first change after a quiet interval is logged at once, and a few changes are named."""

    NAMED = 3  # changes named in a line; more are only counted

    def __init__(self, interval: float = SUMMARY_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.added = 0
        self.removed = 0
        self.received = 0  # events the watch delivered (before coalescing)
        self.named: List[str] = []
        self.since = clock()  # the start of the window the next line covers
        self.last: Optional[float] = None  # when the last line was logged (None: the first change is logged at once)

    def count(self, event: LeaseEvent) -> None:
        if event.lease is None:
            return
        if event.kind == "added":
            self.added += 1
        elif event.kind == "removed":
            self.removed += 1
        else:
            return
        if len(self.named) < self.NAMED:
            self.named.append("%s %s of %s" % (event.kind, event.lease.label, event.lease.attrs.address))

    def line(self, remote: int) -> Optional[str]:
        """The summary once the interval has passed since the last one and something changed, else None."""
        now = self.clock()
        if not (self.added or self.removed) or (self.last is not None and now - self.last < self.interval):
            return None
        changes = self.added + self.removed
        text = "lease events in the last %.0f s: %d added, %d removed" % (
            max(1.0, now - self.since), self.added, self.removed)
        if self.received > changes:
            text += " (from %d watch events)" % self.received
        if changes <= self.NAMED:
            text += " (%s)" % ", ".join(self.named)
        text += "; %d remote lease%s now" % (remote, "" if remote == 1 else "s")
        self.added = self.removed = self.received = 0
        self.named = []
        self.last = self.since = now
        return text


def config_text(config: Any) -> str:
    """A network config (NetworkConfig or dict) as JSON for the log, secrets hidden by the catalogue's
    ``no_log`` (the one redactor the modules use too)."""
    data = config.to_dict(defaults=False) if hasattr(config, "to_dict") else config
    return json.dumps(catalogue.redact(data), separators=(",", ":"))


class _Fatal(Exception):
    """Start-up cannot continue; the message is one line for a person."""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _nets(config: NetworkConfig) -> str:
    return " ".join(str(pool.network) for pool in config.pools())


def _clock(when: float) -> str:
    if when == float("inf"):
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
