# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The lease validator and :class:`LeaseBook`: which leases read from etcd a datapath or a module may use.

Shared verbatim by the Ansible modules (module_utils) and the pyflannel agent
(``pyflannel/leasebook.py`` is a symlink to it).  Standard library only, Python 3.8 syntax.  The lease
key/JSON layout is in ``leases.py``, which re-exports the names defined here.
"""

import ipaddress

from .catalogue import BY_NAME


# ------------------------------------------------------------------------------------------------
# The lease validator: what etcd holds is input.  Every lease is judged here before it reaches a
# datapath (the agent) or a module's answer (flannel_lease_info's ``skipped``).
# ------------------------------------------------------------------------------------------------
def _unicast_problem(address):
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.is_link_local:
        return "is a link-local address (a node needs a global IPv6 address other nodes can route to)"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return "is an IPv4-mapped address"
    if ip.is_unspecified:
        return "is the unspecified address"
    if ip.is_multicast:
        return "is a multicast address"
    if ip.version == 4 and (ip == ipaddress.IPv4Address("255.255.255.255") or ip in _CLASS_E):
        return "is a broadcast or reserved (240.0.0.0/4) address"
    return None


_CLASS_E = ipaddress.IPv4Network("240.0.0.0/4")


def _family_problem(lease, version, network, subnet_len):
    subnet = lease.subnet if version == 4 else lease.ipv6_subnet
    lead = "" if version == 4 else "IPv6"
    if not subnet.subnet_of(network):
        return "its subnet %s lies outside the %snetwork %s" % (subnet, "IPv6 " if version == 6 else "", network)
    if subnet_len is not None and subnet.prefixlen != subnet_len:
        return "its subnet %s is not a /%d (the configured %sSubnetLen)" % (subnet, subnet_len, lead)
    address = lease.attrs.public_ip if version == 4 else lease.attrs.public_ipv6
    if address is None:
        if version == 4:
            return "its PublicIP 0.0.0.0 is the unspecified address"
        return "it has an IPv6 subnet but no PublicIPv6"
    why = _unicast_problem(address)
    if why:
        return "its PublicIP%s %s %s" % ("v6" * (version == 6), address, why)
    spec = BY_NAME.get(lease.attrs.backend_type)
    for key, kind in spec.lease_data if spec is not None else ():
        value = lease.attrs.data(key, version)
        if kind == "mac" and value is not None:
            if int(value[:2], 16) & 1:
                return "its %s %s is a multicast MAC" % (key, value)
            if value.replace(":", "").strip("0") == "":
                return "its %s %s is all zeros" % (key, value)
    return None


def lease_problem(lease, network, subnet_len, network6=None, subnet_len6=None):
    """Why ``lease`` must not be used on its own merits (None when it may): each subnet the network
    uses must be a ``/subnet_len`` inside its network, the matching PublicIP (PublicIPv6) unicast, a
    vxlan VtepMAC a unicast MAC.  ``network`` None with ``network6`` given is an IPv6-only network;
    both None: no config is known, only the addresses are judged.  Conflicts between leases
    (overlaps, shared VtepMAC) are judged by :class:`LeaseBook`."""
    known = network is not None or network6 is not None
    checked = []
    if lease.subnet is not None and (network is not None or not known):
        checked.append((4, network, subnet_len))
    if lease.ipv6_subnet is not None and (network6 is not None or not known):
        checked.append((6, network6, subnet_len6))
    if not checked:
        if lease.subnet is None:
            return "it has no IPv4 subnet (an IPv6-only lease) and this network has no IPv6"
        return "it has no IPv6 subnet and this network is IPv6-only"
    for version, net, plen in checked:
        if net is None:  # no config known: the address and the MACs only
            net = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
            plen = None
        why = _family_problem(lease, version, net, plen)
        if why:
            return why
    return None


def lease_age(lease):
    """Older first: etcd's create revision/index, then the key (a stable tie-break)."""
    return (lease.created or 0, lease.key_name)


_age = lease_age


class LeaseBook:
    """The other nodes' leases and the verdict on each: which a datapath may use.

    Incremental, so a watch event costs O(1) and not a pass over thousands of leases.  ``own`` is
    this node's lease (if any): a lease overlapping it or sharing its identity (VtepMAC, PublicKey) is refused.  Of two
    leases that overlap or share an identity the older one (etcd create revision/index) wins.

    ``put``, ``remove`` and ``replace_all`` return a :class:`Change`: the leases the datapath must
    add (new, changed or no longer outvoted) and remove, and the leases newly refused with why.
    """

    def __init__(self, network=None, subnet_len=None, own=None, network6=None, subnet_len6=None):
        self.network = network
        self.subnet_len = subnet_len
        self.network6 = network6
        self.subnet_len6 = subnet_len6
        self.own = own
        self.leases = {}  # key name -> Lease: every parsed lease of another node
        self.accepted = {}  # key name -> Lease
        self.rejected = {}  # key name -> reason (parsed leases and keys/values that do not parse)
        self._by_subnet = {}  # IPv4Network / IPv6Network -> key name of the accepted lease holding it
        self._by_identity = {}  # (family, key, value) of BackendData no two nodes share -> accepted lease
        self._outvoted = set()  # rejected for a conflict: looked at again when the winner leaves

    # -- queries ----------------------------------------------------------------------------------
    def usable(self):
        return list(self.accepted.values())

    # -- changes ----------------------------------------------------------------------------------
    def reject_unparsed(self, name, reason):
        """A key or value that does not parse; returns a Change (the lease it replaces goes)."""
        old_reason = self.rejected.get(name)
        change = self._drop(name)
        if old_reason != reason:
            change.rejected.append((name, reason))
        self.rejected[name] = reason
        return change

    def put(self, lease):
        change = self._drop(lease.key_name, keep_reason=True)
        old_reason = self.rejected.pop(lease.key_name, None)
        self.leases[lease.key_name] = lease
        self._judge(lease, change, old_reason)
        self._reconsider(change)
        # a lease that stays usable is replaced in place (an "added" over the old one), not removed first
        kept = set(added.key_name for added in change.added)
        change.removed = [gone for gone in change.removed if gone.key_name not in kept]
        return change

    def remove(self, name):
        change = self._drop(name)
        self._reconsider(change)
        return change

    def replace_all(self, leases, unparsed=None):
        """A full list (snapshot): judge every lease afresh, oldest first."""
        before_accepted = self.accepted
        before_rejected = self.rejected
        self.leases, self.accepted, self.rejected = {}, {}, {}
        self._by_subnet, self._by_identity, self._outvoted = {}, {}, set()
        scratch = Change()
        for lease in sorted(leases, key=_age):
            self.leases[lease.key_name] = lease
            self._judge(lease, scratch, None)
        self.rejected.update(unparsed or {})
        change = Change()
        for name, lease in self.accepted.items():
            old = before_accepted.get(name)
            if old is None or old.attrs != lease.attrs:
                change.added.append(lease)
        change.removed = [lease for name, lease in before_accepted.items() if name not in self.accepted]
        for name, why in self.rejected.items():
            if before_rejected.get(name) != why:
                change.rejected.append((name, why))
        return change

    # -- internals --------------------------------------------------------------------------------
    def _drop(self, name, keep_reason=False):
        change = Change()
        self.leases.pop(name, None)
        if not keep_reason:
            self.rejected.pop(name, None)
        self._outvoted.discard(name)
        lease = self.accepted.pop(name, None)
        if lease is not None:
            self._unindex(lease)
            change.removed.append(lease)
        return change

    def _unindex(self, lease):
        for subnet in lease.subnets():
            if self._by_subnet.get(subnet) == lease.key_name:
                del self._by_subnet[subnet]
        for mac in self._identities(lease):
            if self._by_identity.get(mac) == lease.key_name:
                del self._by_identity[mac]

    @staticmethod
    def _identities(lease):
        """(family, BackendData key, value) entries no other node may share."""
        return [(version,) + ident for version, ident in ((4, lease.attrs.identity), (6, lease.attrs.identity6))
                if ident is not None]

    def _judge(self, lease, change, old_reason):
        name = lease.key_name
        why = lease_problem(lease, self.network, self.subnet_len, self.network6, self.subnet_len6)
        own = self.own
        macs = self._identities(lease)
        if why is None and own is not None:
            for mine, theirs in zip((own.subnet, own.ipv6_subnet), (lease.subnet, lease.ipv6_subnet)):
                if mine is not None and theirs is not None and theirs.overlaps(mine):
                    why = "its subnet %s overlaps this node's own lease %s" % (theirs, mine)
                    break
            else:
                shared = set(macs) & set(self._identities(own))
                if shared:
                    why = "its %s %s is this node's own" % sorted(shared)[0][1:]
        if why is not None:
            self._refuse(name, why, change, old_reason)
            return
        rivals = []
        for subnet in lease.subnets():
            holder = self._by_subnet.get(subnet)
            if holder is not None and holder != name and all(r[0].key_name != holder for r in rivals):
                rivals.append((self.accepted[holder], "overlaps"))
        for mac in macs:
            holder = self._by_identity.get(mac)
            if holder is not None and holder != name and all(r[0].key_name != holder for r in rivals):
                rivals.append((self.accepted[holder], "shares its %s %s with" % mac[1:]))
        older = [(r, how) for r, how in rivals if _age(r) < _age(lease)]
        if older:
            rival, how = older[0]
            self._outvoted.add(name)
            self._refuse(name, "it %s the older lease %s of %s" % (how, rival.label, rival.attrs.address),
                         change, old_reason)
            return
        for rival, how in rivals:  # younger rivals give way
            self.accepted.pop(rival.key_name)
            self._unindex(rival)
            change.removed.append(rival)
            self._outvoted.add(rival.key_name)
            reason = "it %s the older lease %s of %s" % (how, lease.label, lease.attrs.address)
            self.rejected[rival.key_name] = reason
            change.rejected.append((rival.key_name, reason))
        self.accepted[name] = lease
        for subnet in lease.subnets():
            self._by_subnet[subnet] = name
        for mac in macs:
            self._by_identity[mac] = name
        change.added.append(lease)

    def _refuse(self, name, why, change, old_reason):
        self.rejected[name] = why
        if why != old_reason:
            change.rejected.append((name, why))

    def _reconsider(self, change):
        """Leases outvoted by a lease that has gone may be usable now (oldest first)."""
        if not change.removed or not self._outvoted:
            return
        for name in sorted(self._outvoted, key=lambda n: _age(self.leases[n]) if n in self.leases else (0, n)):
            lease = self.leases.get(name)
            self._outvoted.discard(name)
            if lease is None or name in self.accepted:
                continue
            old_reason = self.rejected.pop(name, None)
            self._judge(lease, change, old_reason)


class Change:
    """What a :class:`LeaseBook` update means for a datapath."""

    __slots__ = ("added", "removed", "rejected")

    def __init__(self):
        self.added = []  # Lease: program (new, changed, or no longer outvoted)
        self.removed = []  # Lease: unprogram
        self.rejected = []  # (key name, reason): refused now (log once)

    def extend(self, other):
        self.added.extend(other.added)
        self.removed.extend(other.removed)
        self.rejected.extend(other.rejected)
        return self


def judge_leases(leases, network=None, subnet_len=None, network6=None, subnet_len6=None):
    """Batch verdicts (for modules): (accepted leases, {key name: reason} for the refused ones)."""
    book = LeaseBook(network, subnet_len, network6=network6, subnet_len6=subnet_len6)
    book.replace_all(leases)
    return book.usable(), dict(book.rejected)
