"""The one backend interface and the backend registry.

A backend turns leases into a datapath.  It knows nothing of etcd: the agent hands it leases.
Life cycle, driven by the agent (pyflannel/agent.py):

1. ``backend = create(config, ext_iface, settings)`` — ``config`` is the parsed NetworkConfig,
   ``ext_iface`` the selected :class:`~pyflannel.iface.ExternalInterface` (re-exported here), ``settings``
   the agent's flags a backend may need (``wireguard_key_file``, ...).
   ``backend.check_identity(leases)`` before prepare(), ``leases`` a callable listing every lease in the
   store (ours included), called only by a backend that has an identity to check: an identity of this
   node (wireguard's key) that an older lease of another node already holds is replaced before any
   device or lease uses it (optional: the default checks nothing and lists nothing).
2. ``attrs = backend.prepare()`` — create devices that must exist before the lease is taken
   (vxlan needs its VtepMAC) and return the :class:`LeaseAttrs` to publish.
3. The agent acquires the lease (its subnet may be a different one than last time).
4. ``backend.configure(lease)`` — address the device, routes for the whole network, etc.
5. ``backend.sync(leases)`` with every other node's lease (after each full list), then
   ``lease_added(lease)`` / ``lease_removed(lease)`` as the watch reports changes.  ``sync`` must make
   the datapath match exactly the given set (add what is missing, remove what is stale).
6. ``backend.tick()`` every few seconds (repairs, counters), after ``backend.check_identity(leases)``
   with ``leases`` giving our lease and every other lease the agent knows (valid or not):
   :class:`IdentityClash` means an older lease of another node holds our identity, and the agent exits 1
   (the next start uses a new one);
   ``backend.close()`` on shutdown
   (a restart keeps devices and routes so traffic does not flap; ``cleanup()`` removes everything
   this backend installs, used when the backend type or VNI changed).

Adding a backend: an entry in the catalogue (``pyflannel/catalogue.py``) naming its module, and that
module, which subclasses :class:`Backend` (or :class:`RouteBackend`) and decorates it with
``@register("name")``.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Type

from pyflannel import catalogue, netlink
from pyflannel.iface import ExternalInterface
from pyflannel.leases import Lease, LeaseAttrs
from pyflannel.netconfig import NetworkConfig


class BackendError(Exception):
    """A backend cannot work as configured; ``str()`` is one line saying what to do."""


class IdentityClash(BackendError):
    """While running: an older lease of another node holds this node's identity (e.g. its wireguard
    public key: a cloned key file).  The agent exits 1; the next start replaces the identity."""


class Backend:
    """Base class: every method has a safe default so small backends stay small."""

    name = "base"

    def __init__(self, config: NetworkConfig, ext_iface: ExternalInterface,
                 settings: Optional[Dict[str, Any]] = None) -> None:
        self.config = config
        self.ext_iface = ext_iface
        self.settings: Dict[str, Any] = dict(settings or {})
        self.spec = catalogue.get(self.name)
        self.lease: Optional[Lease] = None

    # -- life cycle -----------------------------------------------------------------------------
    def prepare(self) -> LeaseAttrs:
        """The lease to publish: PublicIP when the network has IPv4 (else none: "0.0.0.0"), PublicIPv6
        when it has IPv6 (as Go v0.20)."""
        return LeaseAttrs(self.ext_iface.public_ip if self.enable_ipv4 else None,
                          self.spec.lease_type if self.spec else self.name,
                          public_ipv6=self.ext_iface.public_ipv6 if self.enable_ipv6 else None)

    @property
    def enable_ipv4(self) -> bool:
        """The network carries IPv4 (a config without EnableIPv4/EnableIPv6 keys does)."""
        return bool(getattr(self.config, "enable_ipv4", True))

    @property
    def enable_ipv6(self) -> bool:
        return bool(getattr(self.config, "enable_ipv6", False))

    def mtu(self) -> int:
        """The MTU containers must use on this network (FLANNEL_MTU): the ``MTU`` option, else the
        interface's MTU minus the catalogue's overhead for this backend."""
        override = self.config.option("MTU")
        return int(override) if override else self.ext_iface.mtu - (self.spec.overhead if self.spec else 0)

    def default(self, go: str) -> Any:
        """The catalogue's default of this backend's option ``go`` (Go's key name)."""
        return self.spec.option(go).default

    def check_identity(self, leases: Callable[[], Iterable[Optional[Lease]]]) -> None:
        """Make sure no other node's older lease holds an identity of this node (wireguard's public key).

        ``leases()``: every lease in the store, ours included (None entries are skipped); a callable, so
        that a backend without an identity costs no listing.  Before :meth:`prepare` a backend replaces
        such an identity (no device or lease has used it yet); once prepared it raises
        :class:`IdentityClash`.  Whatever ``leases()`` raises (the store failing) goes to the caller.
        The default has nothing to check."""

    def configure(self, lease: Lease) -> None:
        self.lease = lease

    # -- helpers for subclasses -------------------------------------------------------------------
    def is_remote(self, lease: Lease) -> bool:
        """A lease of this backend type that is not our own: it shares no subnet (IPv4 or IPv6) with our
        lease (for leases as the store keeps them: its key name differs from ours)."""
        if lease.attrs.backend_type != (self.spec.lease_type if self.spec else self.name):
            return False
        if self.lease is None:
            return True
        ours = [net for net in (self.lease.subnet, getattr(self.lease, "ipv6_subnet", None)) if net is not None]
        theirs = [net for net in (lease.subnet, getattr(lease, "ipv6_subnet", None)) if net is not None]
        return not any(net in ours for net in theirs)

    def own_subnet(self, version: int = 4) -> Any:
        """Our lease's IPv4 (``version=6``: IPv6) subnet, None without a lease or that family."""
        if self.lease is None:
            return None
        return self.lease.subnet if version == 4 else getattr(self.lease, "ipv6_subnet", None)

    def settle_device(self, msg: Any, dev: str, families: Iterable[int] = (4,), mtu: Optional[int] = None) -> int:
        """Give the device ``msg`` (named ``dev``) our MTU (``mtu`` if given, else :meth:`mtu`), bring it up
        and, once we hold a lease, make the network address of our subnet of each family in ``families`` its
        only address of that family: the IPv4 subnet's as a /32, the IPv6 subnet's as a /128 (its only global
        IPv6 address; link-local addresses stay); returns how many had to change."""
        index = msg["index"]
        changed = 0
        want_mtu = self.mtu() if mtu is None else mtu
        if msg.get_attr("IFLA_MTU") != want_mtu:
            netlink.set_link(index, mtu=want_mtu)
            changed += 1
        if not msg["flags"] & 1:
            netlink.set_link(index, state="up")
            changed += 1
        for version in families:
            subnet = self.own_subnet(version)
            if subnet is None:
                continue
            own = ipaddress.ip_interface("%s/%d" % (subnet.network_address, 32 if version == 4 else 128))
            if netlink.set_only_address(index, own):
                log.info("%s has address %s (lease %s)", dev, own, subnet)
                changed += 1
        return changed

    def sync(self, leases: List[Lease]) -> None:
        pass

    def lease_added(self, lease: Lease) -> None:
        pass

    def lease_removed(self, lease: Lease) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def cleanup(self) -> None:
        """Remove every device/route/fdb entry this backend instance installs."""

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        """Remove whatever any earlier run of this backend type left on the host (devices, routes,
        fdb).  Called for every backend type other than the active one when the agent starts, so a
        backend switch leaves nothing stale behind."""

    # -- observability ----------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        return {"backend": self.name}

    def metrics(self) -> Dict[str, float]:
        """Counters/gauges for /metrics, names without the ``flannel_`` prefix."""
        return {}


log = logging.getLogger("pyflannel.backend")
_REGISTRY: Dict[str, Type[Backend]] = {}
# Modules that register a backend when imported (a missing module means "not available yet").
_MODULES = tuple(b.module for b in catalogue.BACKENDS)


def register(name: str) -> Callable[[Type[Backend]], Type[Backend]]:
    def deco(cls: Type[Backend]) -> Type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module("pyflannel.backend." + mod)
        except ModuleNotFoundError as err:
            if err.name != "pyflannel.backend." + mod:
                raise


def available() -> List[str]:
    _load_all()
    return sorted(_REGISTRY)


def remove_leftovers(active: Backend) -> None:
    """Before ``active.prepare()``: let every other backend type remove what it left behind."""
    _load_all()
    for name, cls in sorted(_REGISTRY.items()):
        if name != active.name:
            cls.remove_installed(active.ext_iface)


def create(config: NetworkConfig, ext_iface: ExternalInterface,
           settings: Optional[Dict[str, Any]] = None) -> Backend:
    _load_all()
    cls = _REGISTRY.get(config.backend_type)
    if cls is None:
        raise BackendError(
            "backend %s is not available yet in this pyflannel (available: %s); use Backend.Type alloc "
            "or upgrade pyflannel" % (config.backend_type, ", ".join(available()))
        )
    return cls(config, ext_iface, settings)
