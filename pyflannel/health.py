"""``/healthz``, ``/readyz`` and ``/metrics`` on ``--healthz-ip:--healthz-port`` (port 0: off).

* ``/healthz``: 200 with a JSON body (subnet, lease expiry, backend status) while the agent runs with a
  lease; 503 otherwise.
* ``/readyz``: 200 once READY=1 was sent (subnet file written); 503 before.
* ``/metrics``: Prometheus text format (:func:`render_metrics`): samples may carry labels; the samples of
  one name form one family under a single HELP and TYPE line.
"""

from __future__ import annotations

import io
import json
import logging
import math
import platform
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
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


# A local prober needs one connection at a time; a flood of slow clients (any local user can open
# sockets) must not take the agent's file descriptors or threads.  At most MAX_CONNECTIONS are served
# at once, each in a thread of its own; further connections wait in the kernel's listen queue
# (LISTEN_BACKLOG) and cost the agent no descriptor until a slot frees.  A client has REQUEST_TIMEOUT
# seconds in all to send its request, and again to take the answer; then it is dropped.
MAX_CONNECTIONS = 16
LISTEN_BACKLOG = 64
REQUEST_TIMEOUT = 5.0
REPORT_INTERVAL = 60.0  # seconds between two log lines about dropped or failed connections

# a client that went away or was too slow: nothing an operator must read about (debug at most)
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _DeadlineReader(io.RawIOBase):
    """The request side of a connection, with one deadline for the whole request: a client that sends
    a byte every few seconds is dropped as surely as one that sends nothing."""

    def __init__(self, sock: socket.socket, deadline: float, on_timeout: Callable[[], None]) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline
        self.on_timeout = on_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("no complete request in time")
            self.sock.settimeout(remaining)
            return self.sock.recv_into(buf)
        except TimeoutError:
            self.on_timeout()
            raise


class _Server(HTTPServer):
    """Binds and parses like HTTPServer; :class:`HealthServer` runs the accept loop and the threads."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: Tuple[str, int], handler: Any, owner: HealthServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:  # no traceback on stderr, ever
        self.owner.connection_failed(sys.exc_info()[1])


class HealthServer:
    """Serves the three endpoints from callbacks: an accept loop in a daemon thread, one thread per
    connection, at most :data:`MAX_CONNECTIONS` at once."""

    def __init__(self, host: str, port: int, health: Callable[[], Tuple[bool, Dict[str, Any]]],
                 ready: Callable[[], bool], metrics: Callable[[], List[Metric]],
                 max_connections: int = MAX_CONNECTIONS, timeout: float = REQUEST_TIMEOUT) -> None:
        self.health = health
        self.ready = ready
        self.metrics = metrics
        self.max_connections = max_connections
        self.timeout = timeout
        self.stats = {"timeouts": 0, "errors": 0, "connections": 0}
        self._reported = {"timeouts": 0, "errors": 0}
        self._last_report = float("-inf")
        self._first_error = ""
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "pyflannel"
            protocol_version = "HTTP/1.0"  # one request per connection

            def setup(self) -> None:
                super().setup()
                deadline = time.monotonic() + owner.timeout
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, owner.timed_out))

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet: no access log on stderr
                log.debug("healthz: " + fmt, *args)

            def _send(self, code: int, body: str, ctype: str) -> None:
                data = body.encode("utf-8")
                self.connection.settimeout(owner.timeout)  # the answer, too, is taken in time or dropped
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
                        answer = (200 if ok else 503, json.dumps(body, sort_keys=True) + "\n", "application/json")
                    elif path == "/readyz":
                        ok = owner.ready()
                        answer = (200 if ok else 503, "ok\n" if ok else "not ready\n", "text/plain")
                    elif path == "/metrics":
                        answer = (200, render_metrics(owner.metrics() + owner.own_metrics()),
                                  "text/plain; version=0.0.4")
                    else:
                        answer = (404, "not found: try /healthz, /readyz or /metrics\n", "text/plain")
                except Exception as err:  # a broken callback must not kill the server
                    log.debug("healthz: %s failed: %s: %s", path, type(err).__name__, err, exc_info=True)
                    answer = (500, "internal error: %s\n" % err, "text/plain")
                self._send(*answer)  # a client gone by now raises here: handled by the connection thread

            do_HEAD = do_GET

        try:
            self.httpd = _Server((host, port), Handler, self)
        except OSError as err:
            raise OSError("cannot serve healthz on %s:%d: %s; pick another --healthz-port or free the port"
                          % (host, port, err.strerror or err)) from None
        self.httpd.socket.settimeout(0.5)  # the accept loop looks at the stop flag twice a second
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> HealthServer:
        self.thread = threading.Thread(target=self._serve, name="healthz", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        self.httpd.server_close()

    # -- the accept loop --------------------------------------------------------------------------
    def _serve(self) -> None:
        sock = self.httpd.socket
        while not self._stopping.is_set():
            self._report()
            # every slot busy: leave new connections in the kernel's queue (no descriptor of ours)
            if not self._slots.acquire(timeout=0.5):
                continue
            conn = None
            try:
                conn, address = sock.accept()
                threading.Thread(target=self._connection, args=(conn, address), name="healthz-conn",
                                 daemon=True).start()
            except TimeoutError:  # nobody knocked
                self._slots.release()
            except Exception as err:  # EMFILE, a thread that cannot start, the socket closed at stop
                self._slots.release()
                if conn is not None:
                    _close(conn)
                if self._stopping.is_set():
                    break
                self.connection_failed(err)
                self._stopping.wait(0.1)  # out of descriptors: do not spin
        self._report(final=True)

    def _connection(self, conn: socket.socket, address: Any) -> None:
        try:
            with self._lock:
                self.stats["connections"] += 1
            self.httpd.finish_request(conn, address)
        except Exception as err:
            self.connection_failed(err)
        finally:
            _close(conn)
            self._slots.release()

    # -- accounting: a flood of slow or broken clients costs a log line a minute, not one each -----
    def timed_out(self) -> None:
        with self._lock:
            self.stats["timeouts"] += 1

    def connection_failed(self, err: Optional[BaseException]) -> None:
        if err is None or isinstance(err, _DISCONNECTS):
            log.debug("healthz: client gone: %s", err)
            return
        log.debug("healthz: connection failed: %s: %s", type(err).__name__, err, exc_info=err)
        with self._lock:
            self.stats["errors"] += 1
            if not self._first_error:
                self._first_error = "%s: %s" % (type(err).__name__, err)

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_report < REPORT_INTERVAL and not final:
            return
        with self._lock:
            timeouts = self.stats["timeouts"] - self._reported["timeouts"]
            errors = self.stats["errors"] - self._reported["errors"]
            first, self._first_error = self._first_error, ""
            self._reported.update(timeouts=self.stats["timeouts"], errors=self.stats["errors"])
        if not (timeouts or errors):
            return
        parts = []
        if timeouts:
            parts.append("dropped %d connection%s that did not complete a request within %g s"
                         % (timeouts, "" if timeouts == 1 else "s", self.timeout))
        if errors:
            parts.append("%d connection%s failed (first: %s)" % (errors, "" if errors == 1 else "s", first))
        since = "" if self._last_report == float("-inf") else " in the last %.0f s" % (now - self._last_report)
        log.warning("healthz: %s%s (at most %d connections are served at once; more of these are summed up "
                    "once a minute)", "; ".join(parts), since, self.max_connections)
        self._last_report = now

    def own_metrics(self) -> List[Metric]:
        with self._lock:
            timeouts, errors = self.stats["timeouts"], self.stats["errors"]
        return [("flannel_healthz_timeouts_total", "counter", "healthz connections dropped because the request "
                 "or the answer took longer than %g s" % self.timeout, float(timeouts)),
                ("flannel_healthz_errors_total", "counter", "healthz connections that failed otherwise",
                 float(errors))]


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
