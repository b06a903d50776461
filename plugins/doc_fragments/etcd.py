# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The etcd connection options every netfabric.flannel module shares."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  endpoints:
    description:
      - The etcd client URLs, like V(http://10.0.0.1:2379).
      - They are tried in the order given; when one does not answer the next one is used (failover).
    type: list
    elements: str
    default: ["http://127.0.0.1:2379"]
  prefix:
    description:
      - The etcd key prefix of the flannel network, the same value the agents get as C(--etcd-prefix).
      - The network config lives at C(<prefix>/config), the leases under C(<prefix>/subnets/).
    type: str
    default: /coreos.com/network
  api:
    description:
      - The etcd API to use.
      - V(v2) talks to the v2 keys API (etcd needs C(--enable-v2=true)); flannel 0.17 and older use it.
      - V(v3) talks to the v3 API through etcd's JSON gateway.
      - V(auto) uses the API under which C(<prefix>/config) exists. Only under v2, v2; only under v3, v3;
        under both with the same content (compared as parsed JSON), v3; under both with different content the
        module fails with one line naming both documents, and O(api) must say which one holds the network.
        Under neither (a new network), v3, or v2 when etcd serves only the v2 API (no v3 gateway).
      - V(auto) reads C(<prefix>/config) under both APIs only when both client libraries are installed; with
        only one of them it uses that library's API.
      - Go flanneld nodes and pyflannel nodes of one network must use the same API, since v2 and v3 keys are
        separate in etcd. Pass O(api) explicitly in playbooks that manage a known network; RV(api) in the
        result says which API a run used.
    type: str
    choices: [v2, v3, auto]
    default: auto
  ca_cert:
    description:
      - A PEM file with the CA that signed the etcd server certificate (for V(https://) endpoints).
    type: path
  client_cert:
    description:
      - A PEM client certificate for etcd client TLS authentication. Needs O(client_key).
    type: path
  client_key:
    description:
      - The private key of O(client_cert).
    type: path
  username:
    description:
      - The etcd user when etcd authentication is enabled.
    type: str
  password:
    description:
      - The password of O(username).
    type: str
  timeout:
    description:
      - Seconds to wait for one etcd request before the next endpoint is tried.
    type: float
    default: 5.0
requirements:
  - python-etcd (Python library) on the managed host for O(api=v2).
  - etcd3gw (Python library) on the managed host for O(api=v3); O(api=auto) needs at least one of the two.
notes:
  - The module runs on the managed host and talks to etcd from there; run it on a host that reaches the
    O(endpoints), often the first etcd member or the controller (C(delegate_to=localhost)).
  - All the modules of this collection belong to the action group C(netfabric.flannel.etcd), so the connection
    options can be set once with C(module_defaults) for C(group/netfabric.flannel.etcd).
"""
