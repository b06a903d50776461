"""/healthz, /readyz, /metrics: status codes, JSON body, Prometheus text format."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from pyflannel.health import HealthServer, metric_name, render_metrics


def test_render_metrics_prometheus_text():
    text = render_metrics([("flannel_remote_leases", "gauge", "leases", 3.0),
                           ("lease_expiry_timestamp_seconds", "gauge", "expiry", float("inf")),
                           ("udp-packets.in_total", "counter", "packets", 12)])
    assert text == ("# HELP flannel_remote_leases leases\n# TYPE flannel_remote_leases gauge\nflannel_remote_leases 3\n"
                    "# HELP flannel_lease_expiry_timestamp_seconds expiry\n"
                    "# TYPE flannel_lease_expiry_timestamp_seconds gauge\nflannel_lease_expiry_timestamp_seconds +Inf\n"
                    "# HELP flannel_udp_packets_in_total packets\n# TYPE flannel_udp_packets_in_total counter\n"
                    "flannel_udp_packets_in_total 12\n")
    assert metric_name("flannel_x") == "flannel_x"


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def server():
    state = {"ok": False, "ready": False}
    srv = HealthServer("127.0.0.1", 0, lambda: (state["ok"], {"subnet": "10.1.2.0/24"} if state["ok"] else {}),
                       lambda: state["ready"], lambda: [("flannel_up", "gauge", "up", 1.0)]).start()
    yield srv, state
    srv.stop()


def test_endpoints_follow_state(server):
    srv, state = server
    assert get(srv.port, "/healthz")[0] == 503
    assert get(srv.port, "/readyz")[0] == 503
    state.update(ok=True, ready=True)
    status, body = get(srv.port, "/healthz")
    assert status == 200 and json.loads(body) == {"subnet": "10.1.2.0/24"}
    assert get(srv.port, "/readyz") == (200, "ok\n")
    status, body = get(srv.port, "/metrics")
    assert status == 200 and "\nflannel_up 1\n" in body
    assert get(srv.port, "/nope")[0] == 404


def test_port_in_use_is_one_line(server):
    srv, _state = server
    with pytest.raises(OSError) as err:
        HealthServer("127.0.0.1", srv.port, lambda: (True, {}), lambda: True, lambda: [])
    assert "--healthz-port" in str(err.value) and "\n" not in str(err.value)


# -- a flood of slow or vanishing clients ----------------------------------------------------------

def _idle(port):
    """A client that connects and sends nothing (or half a request)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_by_server(sock):
    """True once the server closed ``sock``: recv gives EOF or a reset (bounded by the socket's timeout)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def _wait(predicate, what):
    for _attempt in range(200):  # a bound, not a threshold: at most 20 s
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def _conn_threads():
    return [t for t in threading.enumerate() if t.name == "healthz-conn"]


@pytest.fixture
def small():
    srv = HealthServer("127.0.0.1", 0, lambda: (True, {"ok": 1}), lambda: True, lambda: [],
                       max_connections=3, timeout=0.5).start()
    yield srv
    srv.stop()


def test_slow_clients_are_dropped_and_summed_up_in_one_line(small, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="pyflannel.health")
    silent = _idle(small.port)
    partial = _idle(small.port)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert _closed_by_server(silent) and _closed_by_server(partial)
    _wait(lambda: small.stats["timeouts"] == 2, "two timeouts counted")
    silent.close()
    partial.close()
    assert get(small.port, "/healthz")[0] == 200
    _wait(lambda: [r for r in caplog.records if r.levelno >= logging.WARNING], "the summary line")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # the first drop is reported at once, later ones once a minute: one line here, whichever it counted
    assert len(warnings) == 1 and "within 0.5 s" in warnings[0], warnings
    assert "dropped 2 connections" in warnings[0] or "dropped 1 connection " in warnings[0], warnings
    assert "Traceback" not in capfd.readouterr().err
    status, body = get(small.port, "/metrics")
    assert status == 200 and "\nflannel_healthz_timeouts_total 2\n" in body


def test_connections_beyond_the_cap_wait_in_the_kernel_queue():
    srv = HealthServer("127.0.0.1", 0, lambda: (True, {}), lambda: True, lambda: [], max_connections=2,
                       timeout=30).start()
    try:
        holders = [_idle(srv.port) for _i in range(2)]
        _wait(lambda: srv.stats["connections"] == 2, "both slots taken")
        waiting = [_idle(srv.port) for _i in range(20)]  # accepted by the kernel, not by the server
        for sock in waiting:
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
        assert srv.stats["connections"] == 2 and len(_conn_threads()) <= 2
        for sock in holders:
            sock.close()
        for sock in waiting:  # each is served once a slot frees, never more than two at once
            assert sock.recv(100).startswith(b"HTTP/1.0 200")
            sock.close()
            assert len(_conn_threads()) <= 2
    finally:
        srv.stop()


def test_client_gone_before_the_answer_is_no_traceback(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="pyflannel.health")
    gate = threading.Event()

    def slow_health():
        gate.wait(10)
        return True, {"big": "x" * 100000}

    srv = HealthServer("127.0.0.1", 0, slow_health, lambda: True, lambda: []).start()
    try:
        for _i in range(5):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            sock.close()
        gate.set()
        _wait(lambda: not _conn_threads(), "the connection threads to finish")
        assert get(srv.port, "/readyz")[0] == 200
    finally:
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert srv.stats["errors"] == 0


def test_broken_callback_answers_500_without_traceback(capfd):
    def broken():
        raise RuntimeError("callback broke")

    srv = HealthServer("127.0.0.1", 0, broken, lambda: True, lambda: []).start()
    try:
        status, body = get(srv.port, "/healthz")
        assert status == 500 and "callback broke" in body
    finally:
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_server_handle_error_never_prints_a_traceback(small, capfd):
    for err in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), ValueError("odd")):
        try:
            raise err
        except Exception:
            small.httpd.handle_error(None, ("127.0.0.1", 1))
    assert capfd.readouterr().err == ""
    assert small.stats["errors"] == 1  # only the unexpected one counts


def test_ipv6_loopback():
    """--healthz-ip may be an IPv6 address (the server then listens on AF_INET6); ::1 is on every test host."""
    srv = HealthServer("::1", 0, lambda: (True, {}), lambda: True, lambda: []).start()
    try:
        with urllib.request.urlopen("http://[::1]:%d/readyz" % srv.port, timeout=5) as resp:
            assert resp.status == 200
    finally:
        srv.stop()
