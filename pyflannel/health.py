"""``/healthz``, ``/readyz`` and ``/metrics`` on ``--healthz-ip:--healthz-port`` (port 0: off).

* ``/healthz``: 200 with a JSON body (subnet, lease expiry, backend status) while the agent runs with a
  lease; 503 otherwise.
* ``/readyz``: 200 once READY=1 was sent (subnet file written); 503 before.
* ``/metrics``: Prometheus text format (:func:`render_metrics`): samples may carry labels; the samples of
  one name form one family under a single HELP and TYPE line.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

log = logging.getLogger("pyflannel.health")

# (name, type, help, value) or (name, type, help, value, labels). Samples that share a name form one
# family: HELP and TYPE are written once, from the family's first sample.
Metric = Union[Tuple[str, str, str, float], Tuple[str, str, str, float, Dict[str, str]]]


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if math.isnan(value):
            return "NaN"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


_NAME_RE = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    name = _NAME_RE.sub("_", name)
    if not name.startswith("flannel_"):
        name = "flannel_" + name
    return name


def label_name(name: str) -> str:
    name = _LABEL_RE.sub("_", name) or "_"
    return "_" + name if name[0].isdigit() else name


def escape_label_value(value: Any) -> str:
    """A label value in the text format: backslash, double quote and line feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Optional[Dict[str, Any]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join('%s="%s"' % (label_name(k), escape_label_value(v)) for k, v in labels.items()) + "}"


def render_metrics(metrics: List[Metric]) -> str:
    """Prometheus text format 0.0.4: one HELP and one TYPE line per family, its samples grouped under them
    (in the order the families first appear)."""
    families: Dict[str, Tuple[str, str, List[str]]] = {}
    for metric in metrics:
        name, kind, text, value = metric[:4]
        labels = metric[4] if len(metric) > 4 else None  # type: ignore[misc]
        name = metric_name(name)
        family = families.setdefault(name, (kind, text, []))
        family[2].append("%s%s %s" % (name, _labels(labels), _fmt(value)))
    out = []
    for name, (kind, text, samples) in families.items():
        out.append("# HELP %s %s" % (name, _escape_help(text)))
        out.append("# TYPE %s %s" % (name, kind))
        out.extend(samples)
    return "\n".join(out) + "\n"


def build_info(version: str, backend: str) -> Metric:
    """``flannel_build_info{version, python, backend} 1``: what runs where, for joins and dashboards."""
    return ("flannel_build_info", "gauge", "pyflannel version, Python version and backend of this agent (always 1)",
            1.0, {"version": version, "python": platform.python_version(), "backend": backend})


# Backend counters that are one family split by reason: the backend's name -> (family, labels).
_BACKEND_FAMILIES: Dict[str, Tuple[str, Dict[str, str]]] = {
    "udp_drops_unknown_source_total": ("udp_dropped_packets_total", {"direction": "rx", "reason": "unknown_sender"}),
    "udp_rx_dropped_bad_header_total": ("udp_dropped_packets_total", {"direction": "rx", "reason": "bad_header"}),
    "udp_rx_dropped_bad_length_total": ("udp_dropped_packets_total", {"direction": "rx", "reason": "bad_length"}),
    "udp_rx_dropped_foreign_source_total": ("udp_dropped_packets_total",
                                            {"direction": "rx", "reason": "foreign_source"}),
    "udp_rx_dropped_foreign_destination_total": ("udp_dropped_packets_total",
                                                 {"direction": "rx", "reason": "foreign_destination"}),
    "udp_drops_no_route_total": ("udp_dropped_packets_total", {"direction": "tx", "reason": "no_route"}),
    "udp_drops_ttl_total": ("udp_dropped_packets_total", {"direction": "tx", "reason": "ttl_expired"}),
}
_BACKEND_HELP = {
    "udp_dropped_packets_total": "udp packets dropped, by direction (rx: received from a peer, tx: read from "
                                 "the TUN) and reason",
}


def backend_metrics(backend: str, values: Dict[str, float]) -> List[Metric]:
    """A backend's ``metrics()`` dict as samples: ``*_total`` names are counters, the rest gauges; the
    members of a family split by reason become one name with labels."""
    out: List[Metric] = []
    for name, value in sorted(values.items()):
        family, labels = _BACKEND_FAMILIES.get(name, (name, {}))
        kind = "counter" if family.endswith("_total") else "gauge"
        text = _BACKEND_HELP.get(family, "backend %s: %s" % (backend, family))
        out.append(("flannel_" + family, kind, text, float(value), labels) if labels
                   else ("flannel_" + family, kind, text, float(value)))
    return out


class HealthServer:
    """Serves the three endpoints from callbacks, in a daemon thread."""

    def __init__(self, host: str, port: int, health: Callable[[], Tuple[bool, Dict[str, Any]]],
                 ready: Callable[[], bool], metrics: Callable[[], List[Metric]]) -> None:
        self.health = health
        self.ready = ready
        self.metrics = metrics
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "pyflannel"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet: no access log on stderr
                log.debug("healthz: " + fmt, *args)

            def _send(self, code: int, body: str, ctype: str) -> None:
                data = body.encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                try:
                    if path == "/healthz":
                        ok, body = owner.health()
                        self._send(200 if ok else 503, json.dumps(body, sort_keys=True) + "\n", "application/json")
                    elif path == "/readyz":
                        ok = owner.ready()
                        self._send(200 if ok else 503, "ok\n" if ok else "not ready\n", "text/plain")
                    elif path == "/metrics":
                        self._send(200, render_metrics(owner.metrics()), "text/plain; version=0.0.4")
                    else:
                        self._send(404, "not found: try /healthz, /readyz or /metrics\n", "text/plain")
                except Exception as err:  # a broken callback must not kill the server
                    self._send(500, "internal error: %s\n" % err, "text/plain")

            do_HEAD = do_GET

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise OSError("cannot serve healthz on %s:%d: %s; pick another --healthz-port or free the port"
                          % (host, port, err.strerror or err)) from None
        self.httpd.daemon_threads = True
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> HealthServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="healthz", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
