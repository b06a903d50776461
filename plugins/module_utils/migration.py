# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The flannel_migrate module's run: what etcd v2 and v3 hold under the prefix, copying v2's keys to v3 and
removing them from v2.  Used by ``plugins/modules/flannel_migrate.py`` only."""

from __future__ import annotations

import json
import math
import time

from ansible_collections.netfabric.flannel.plugins.module_utils.catalogue import redact_text
from ansible_collections.netfabric.flannel.plugins.module_utils.etcdstore import StoreError, Unreachable, connect
from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import one_line, prefix_of
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import (
    LeaseFormatError,
    config_key,
    decode_lease,
    parse_subnet_key,
    printable,
    subnets_dir,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.netconfig import ConfigError, changes, parse_config

# The facade's words for an etcd that answers but has its v2 keys API switched off (--enable-v2=false).
NO_V2 = "does not serve the v2 API"


class Migration:
    """The module's run: the stores, what each API holds, and the outcome."""

    def __init__(self, module):
        self.module = module
        self.prefix = prefix_of(module)
        self.config_key = config_key(self.prefix)
        self.endpoints = []  # [{url, v2}]
        self.v2 = None  # a V2Store on the endpoints that serve v2, None when none does
        self.v3 = None

    # -- etcd ------------------------------------------------------------------------------------
    def fail(self, msg):
        self.module.fail_json(msg=" ".join(str(msg).split()), api="v3")

    def open(self, api, endpoints):
        params = self.module.params
        try:
            return connect(endpoints=endpoints, api=api, ca_cert=params["ca_cert"], client_cert=params["client_cert"],
                           client_key=params["client_key"], username=params["username"],
                           password=params["password"], timeout=params["timeout"])
        except StoreError as err:
            self.fail(one_line(err))

    def call(self, fn, *args):
        try:
            return fn(*args)
        except StoreError as err:
            self.fail(one_line(err))

    def probe(self):
        """Every endpoint must answer v3 (a read of the config key); find out which ones serve v2 as well."""
        urls = self.module.params["endpoints"] or []
        if not urls:
            self.fail("endpoints is empty: give the client URLs of the etcd members")
        serving = []
        for url in urls:
            for api in ("v3", "v2"):
                store = self.open(api, [url])
                store.report_outages = False
                try:
                    store.get(self.config_key)
                except Unreachable as err:
                    self.fail("etcd at %s does not answer (%s); every member must be up for the migration"
                              % (url, one_line(err)))
                except StoreError as err:
                    if api == "v2" and NO_V2 in str(err):
                        continue
                    self.fail(one_line(err))
                finally:
                    store.close()
                if api == "v2":
                    serving.append(url)
            self.endpoints.append({"url": url, "v2": url in serving})
        self.v3 = self.open("v3", urls)
        if serving:
            self.v2 = self.open("v2", serving)

    def read(self, store):
        """(config KV or None, {key: KV} of every key under <prefix>/subnets/) as ``store`` holds them."""
        config = self.call(store.get, self.config_key)
        kvs, _revision = self.call(store.list, subnets_dir(self.prefix))
        return config, dict((kv.key, kv) for kv in kvs)

    # -- state: copied -----------------------------------------------------------------------------
    def copy(self):
        module = self.module
        result = dict(changed=False, api="v3", v2_served=self.v2 is not None, endpoints=self.endpoints,
                      copied=[], unchanged=[], newer_in_v3=[], skipped=[])
        config3, leases3 = self.read(self.v3)
        if self.v2 is None:
            if config3 is None:
                self.fail("no endpoint serves the v2 API and v3 holds no network config at %s: there is nothing to "
                          "copy from; check the prefix, or turn the v2 API on again (--enable-v2=true)"
                          % self.config_key)
            result["config"] = "only_v3"
            return result
        config2, leases2 = self.read(self.v2)
        if config2 is None and config3 is None:
            self.fail("there is no network config at %s in v2 nor in v3: nothing to migrate; check the prefix"
                      % self.config_key)
        if config2 is not None and config3 is not None and not same_config(config2.value, config3.value):
            self.fail("v3 already holds a different network config at %s (v3 -> v2: %s); nothing was copied: make the "
                      "two agree (or delete the v3 one) and run again"
                      % (self.config_key, config_difference(config3.value, config2.value)))

        # Judge every v2 lease before anything is written: a conflict stops the run with nothing changed.
        owners3 = []
        for kv in leases3.values():
            try:
                owners3.append((kv.key, parse_subnet_key(kv.key), decode_lease(kv.value)))
            except LeaseFormatError:
                continue  # not a lease; agents skip it too, and it overlaps nothing they use
        todo = []
        conflicts = []
        now = time.time()
        for key in sorted(leases2):
            kv2 = leases2[key]
            try:
                subnets = parse_subnet_key(key)
                attrs = decode_lease(kv2.value)
            except LeaseFormatError as err:
                result["skipped"].append({"key": printable(key), "reason": one_line(err)})
                continue
            ttl = None
            if kv2.has_ttl:
                ttl = math.ceil((kv2.expiration or now) - now)
                if ttl < 1:
                    result["skipped"].append({"key": key, "reason": "expired while copying"})
                    continue
            kv3 = leases3.get(key)
            if kv3 is not None:
                if kv3.value == kv2.value and kv3.has_ttl == kv2.has_ttl:
                    result["unchanged"].append(key)
                    continue
                try:
                    theirs = decode_lease(kv3.value)
                except LeaseFormatError as err:
                    conflicts.append("v3 holds %s with a value that is not a lease (%s)" % (key, one_line(err)))
                    continue
                if same_node(theirs, attrs):
                    result["newer_in_v3"].append(key)
                else:
                    conflicts.append("%s belongs to %s in v2 but to %s in v3" % (key, node(attrs), node(theirs)))
                continue
            for key3, subnets3, theirs in owners3:
                if overlap(subnets, subnets3):
                    conflicts.append("v2's %s (%s) overlaps v3's %s (%s)" % (key, node(attrs), key3, node(theirs)))
                elif same_node(theirs, attrs):
                    conflicts.append("%s holds %s in v2 but %s in v3" % (node(attrs), key, key3))
            todo.append((kv2, subnets, attrs, ttl))
        if conflicts:
            more = " (and %d more)" % (len(conflicts) - 1) if len(conflicts) > 1 else ""
            self.fail("refusing to copy the leases to v3: %s%s; nothing was copied: release the wrong lease "
                      "(netfabric.flannel.flannel_lease, state absent, api v3) and run again" % (conflicts[0], more))

        for kv2, (subnet, subnet6), attrs, ttl in todo:
            result["copied"].append({"key": kv2.key, "subnet": text(subnet), "ipv6_subnet": text(subnet6),
                                     "public_ip": attrs.public_ip, "public_ipv6": attrs.public_ipv6, "ttl": ttl,
                                     "reservation": ttl is None})
        copy_config = config2 is not None and config3 is None
        both = config3 is not None and config2 is not None
        result["config"] = "copied" if copy_config else ("same" if both else "only_v3")
        result["changed"] = bool(todo) or copy_config
        if module._diff:
            after = [line(kv2.key, kv2.value, ttl) for kv2, _subnets, _attrs, ttl in todo]
            if copy_config:
                after.append(line(self.config_key, config2.value, None))
            result["diff"] = dict(before="", after="".join(after), before_header="v3 keys under %s" % self.prefix,
                                  after_header="v3 keys under %s" % self.prefix)
        if module.check_mode or not result["changed"]:
            return result

        # The leases first, the config last: a network config in v3 means "the network is in v3".
        copied = []
        for entry, (kv2, _subnets, attrs, ttl) in zip(result["copied"], todo):
            if ttl is not None:  # the time it has left now, not when it was read
                ttl = max(1, math.ceil((kv2.expiration or now) - time.time()))
                entry["ttl"] = ttl
            if self.call(self.v3.create, kv2.key, kv2.value, ttl) is not None:
                copied.append(entry)
                continue
            # created in v3 meanwhile: by the node's own agent (fine), or by another node (a conflict)
            kv3 = self.call(self.v3.get, kv2.key)
            if kv3 is None or not same_node(lease_attrs(kv3), attrs):
                self.fail("%s was written to v3 by another node while copying (%d leases copied so far); run "
                          "again to see the conflict" % (kv2.key, len(copied)))
            result["newer_in_v3"].append(kv2.key)
        result["copied"] = copied
        if copy_config and self.call(self.v3.create, self.config_key, config2.value, None) is None:
            kv3 = self.call(self.v3.get, self.config_key)
            if kv3 is None or not same_config(config2.value, kv3.value):
                self.fail("a different network config was written to %s in v3 while copying; the leases were "
                          "copied, the config not: run again" % self.config_key)
        return result

    # -- state: v2_removed -------------------------------------------------------------------------
    def remove_v2(self):
        module = self.module
        result = dict(changed=False, api="v3", v2_served=self.v2 is not None, endpoints=self.endpoints, removed=[],
                      kept_in_v2=[])
        config3, leases3 = self.read(self.v3)
        if self.v2 is None:
            result["config"] = "only_v3" if config3 is not None else "kept"
            return result
        config2, leases2 = self.read(self.v2)
        if config3 is None:
            self.fail("v3 holds no network config at %s: copy the network to v3 first (state: copied); nothing was "
                      "removed" % self.config_key)
        if config2 is not None and not same_config(config2.value, config3.value):
            self.fail("the network configs at %s differ between v2 and v3 (v3 -> v2: %s); nothing was removed"
                      % (self.config_key, config_difference(config3.value, config2.value)))
        doomed = []
        for key in sorted(leases2):
            kv3 = leases3.get(key)
            if kv3 is None:
                result["kept_in_v2"].append({"key": printable(key), "reason": "v3 has no such key"})
                continue
            mine, theirs = lease_attrs(leases2[key]), lease_attrs(kv3)
            if mine is not None and not same_node(mine, theirs):
                result["kept_in_v2"].append({"key": key, "reason": "v3 holds it for another node"})
                continue
            doomed.append(leases2[key])
        result["removed"] = [kv.key for kv in doomed] + ([self.config_key] if config2 is not None else [])
        result["config"] = "removed" if config2 is not None else "only_v3"
        result["changed"] = bool(result["removed"])
        if module._diff:
            before = [line(kv.key, kv.value, None) for kv in doomed]
            if config2 is not None:
                before.append(line(self.config_key, config2.value, None))
            result["diff"] = dict(before="".join(before), after="", before_header="v2 keys under %s" % self.prefix,
                                  after_header="v2 keys under %s" % self.prefix)
        if not module.check_mode:
            for key in result["removed"]:  # the config last, as it was copied
                self.call(self.v2.delete, key)
        return result


# -- helpers ---------------------------------------------------------------------------------------
def text(value):
    return None if value is None else str(value)


def node(attrs):
    return "/".join(ip for ip in (attrs.public_ip, attrs.public_ipv6) if ip and ip != "0.0.0.0") or "0.0.0.0"


def same_node(a, b):
    return a is not None and b is not None and (a.public_ip, a.public_ipv6) == (b.public_ip, b.public_ipv6)


def lease_attrs(kv):
    try:
        return decode_lease(kv.value)
    except LeaseFormatError:
        return None


def overlap(a, b):
    return any(x is not None and y is not None and x.overlaps(y) for x, y in zip(a, b))


def parsed(value):
    try:
        return parse_config(value)
    except (ConfigError, ValueError, TypeError):
        return None


def same_config(a, b):
    """The same network config: the same text, the same JSON document, or the same meaning for the schema."""
    if a == b:
        return True
    try:
        if json.loads(a) == json.loads(b):
            return True
    except ValueError:
        return False
    first, second = parsed(a), parsed(b)
    return first is not None and second is not None and first.to_dict() == second.to_dict()


def config_difference(old, new):
    """What differs, for one line: key by key with secrets hidden, or why the two cannot be compared."""
    first, second = parsed(old), parsed(new)
    if first is None or second is None:
        return "%s is not a valid network config" % ("v3's" if first is None else "v2's")
    restart, limits = changes(first, second, values=True)
    return ", ".join(restart + limits) or "they differ in keys the schema ignores"


def line(key, value, ttl):
    return "%s = %s%s\n" % (key, redact_text(value), "" if ttl is None else "  (TTL %d s)" % ttl)
