# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""etcd endpoints: URLs parsed and checked, with one clear line for a bad one."""

from urllib.parse import urlsplit

from .common import BadEndpoint

DEFAULT_ENDPOINTS = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")


class Endpoint:
    """One etcd endpoint: ``scheme`` (http/https), ``host`` (IPv6 without brackets), ``port``, ``url``.

    Raises :class:`BadEndpoint` for anything else: no scheme, another scheme, no host, a bad or
    out-of-range port, a path, an unclosed ``[``."""

    def __init__(self, url):
        raw = url.strip()
        hint = "; use a URL like http://10.0.0.1:2379 or https://[fd00::1]:2379 (fix --etcd-endpoints)"
        if "://" not in raw:
            raise BadEndpoint("etcd endpoint %r is not a URL: it lacks http:// or https://%s" % (url, hint))
        try:
            parts = urlsplit(raw)
            host = parts.hostname
        except ValueError as err:
            raise BadEndpoint("etcd endpoint %r is not a URL (%s)%s" % (url, err, hint))
        if parts.scheme not in ("http", "https"):
            raise BadEndpoint("etcd endpoint %r has scheme %r, not http or https%s" % (url, parts.scheme, hint))
        netloc = parts.netloc.rpartition("@")[2]
        if not host or netloc.startswith("[") != ("]" in netloc):
            raise BadEndpoint("etcd endpoint %r has no valid host%s" % (url, hint))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadEndpoint("etcd endpoint %r has a path; give only scheme, host and port%s" % (url, hint))
        port_text = netloc.rpartition("]")[2] if netloc.startswith("[") else netloc
        port_text = port_text.rpartition(":")[2] if ":" in port_text else ""
        if port_text or netloc.endswith(":"):
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise BadEndpoint("etcd endpoint %r has a bad port %r (must be 1..65535)%s" % (url, port_text, hint))
            port = int(port_text)
        else:
            port = 2379
        if ":" in host and not netloc.startswith("["):
            raise BadEndpoint("etcd endpoint %r: an IPv6 host must be in brackets%s" % (url, hint))
        self.scheme = parts.scheme
        self.host = host
        self.port = port
        self.url = "%s://%s:%d" % (self.scheme, self.host if ":" not in self.host else "[%s]" % self.host, self.port)

    def __repr__(self):
        return self.url


def parse_endpoints(endpoints):
    """A comma-separated string or a list of URLs -> list of :class:`Endpoint` (BadEndpoint if one is bad)."""
    if endpoints is None:
        endpoints = DEFAULT_ENDPOINTS
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = [Endpoint(e) for e in endpoints if e and e.strip()]
    if not out:
        raise BadEndpoint("no etcd endpoint given; pass --etcd-endpoints http://HOST:2379")
    return out
