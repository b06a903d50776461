"""/healthz, /readyz, /metrics: status codes, JSON body, Prometheus text format."""

from __future__ import annotations

import json
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
