"""``/healthz``, ``/readyz`` and ``/metrics`` on ``--healthz-ip:--healthz-port`` (port 0: off).

* ``/healthz``: 200 with a JSON body (subnet, lease expiry, backend status) while the agent runs with a
  lease; 503 otherwise.
* ``/readyz``: 200 once READY=1 was sent (subnet file written); 503 before.
* ``/metrics``: Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger("pyflannel.health")

# (name, type, help, value)
Metric = Tuple[str, str, str, float]


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


def metric_name(name: str) -> str:
    name = _NAME_RE.sub("_", name)
    if not name.startswith("flannel_"):
        name = "flannel_" + name
    return name


def render_metrics(metrics: List[Metric]) -> str:
    out = []
    for name, kind, text, value in metrics:
        name = metric_name(name)
        out.append("# HELP %s %s" % (name, text))
        out.append("# TYPE %s %s" % (name, kind))
        out.append("%s %s" % (name, _fmt(value)))
    return "\n".join(out) + "\n"


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
