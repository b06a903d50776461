"""/metrics text format: labels, escaping, one HELP/TYPE per family, build info, backend families."""

from __future__ import annotations

import platform
import socket
from types import SimpleNamespace

from pyflannel import __version__
from pyflannel.agent import Agent
from pyflannel.health import backend_metrics, build_info, escape_label_value, label_name, render_metrics


def test_label_values_are_escaped():
    assert escape_label_value('a"b') == 'a\\"b'
    assert escape_label_value("a\\b") == "a\\\\b"
    assert escape_label_value("a\nb") == "a\\nb"
    assert escape_label_value(3) == "3"
    text = render_metrics([("flannel_x", "gauge", "x", 1.0, {"node": 'we"ird\\name\n'})])
    assert text.splitlines()[2] == 'flannel_x{node="we\\"ird\\\\name\\n"} 1'


def test_label_names_are_sanitised():
    assert label_name("public-ip") == "public_ip"
    assert label_name("1st") == "_1st"


def test_help_and_type_once_per_family_samples_grouped():
    text = render_metrics([
        ("flannel_drops_total", "counter", "drops\nby reason", 1, {"reason": "a"}),
        ("flannel_up", "gauge", "up", 1.0),
        ("flannel_drops_total", "counter", "ignored: the first sample's help wins", 2, {"reason": "b"}),
    ])
    assert text == (
        "# HELP flannel_drops_total drops\\nby reason\n"
        "# TYPE flannel_drops_total counter\n"
        'flannel_drops_total{reason="a"} 1\n'
        'flannel_drops_total{reason="b"} 2\n'
        "# HELP flannel_up up\n"
        "# TYPE flannel_up gauge\n"
        "flannel_up 1\n"
    )
    assert text.count("# TYPE flannel_drops_total") == 1


def test_unlabelled_four_tuples_still_render():
    assert render_metrics([("remote_leases", "gauge", "leases", 3.0)]) == (
        "# HELP flannel_remote_leases leases\n# TYPE flannel_remote_leases gauge\nflannel_remote_leases 3\n")


def test_build_info():
    text = render_metrics([build_info(__version__, "vxlan")])
    assert text.splitlines()[1] == "# TYPE flannel_build_info gauge"
    assert text.splitlines()[2] == 'flannel_build_info{version="%s",python="%s",backend="vxlan"} 1' % (
        __version__, platform.python_version())


def test_udp_drops_become_one_family_with_reasons():
    values = {
        "udp_packets_in_total": 10,
        "udp_drops_unknown_source_total": 1,
        "udp_rx_dropped_bad_header_total": 2,
        "udp_rx_dropped_bad_length_total": 3,
        "udp_rx_dropped_foreign_source_total": 4,
        "udp_rx_dropped_foreign_destination_total": 5,
        "udp_drops_no_route_total": 6,
        "udp_drops_ttl_total": 7,
        "datapath_remote_leases": 2,
    }
    text = render_metrics(backend_metrics("udp", values))
    lines = text.splitlines()
    assert "flannel_udp_packets_in_total 10" in lines
    assert "flannel_datapath_remote_leases 2" in lines
    assert "# TYPE flannel_datapath_remote_leases gauge" in lines
    drops = [line for line in lines if line.startswith("flannel_udp_dropped_packets_total")]
    assert set(drops) == {
        'flannel_udp_dropped_packets_total{direction="rx",reason="unknown_sender"} 1',
        'flannel_udp_dropped_packets_total{direction="rx",reason="bad_header"} 2',
        'flannel_udp_dropped_packets_total{direction="rx",reason="bad_length"} 3',
        'flannel_udp_dropped_packets_total{direction="rx",reason="foreign_source"} 4',
        'flannel_udp_dropped_packets_total{direction="rx",reason="foreign_destination"} 5',
        'flannel_udp_dropped_packets_total{direction="tx",reason="no_route"} 6',
        'flannel_udp_dropped_packets_total{direction="tx",reason="ttl_expired"} 7',
    }
    # one block: HELP, TYPE, then the seven samples back to back
    start = lines.index("# TYPE flannel_udp_dropped_packets_total counter")
    assert lines[start + 1:start + 8] == [line for line in lines if line in drops]
    assert text.count("# HELP flannel_udp_dropped_packets_total") == 1
    assert "unknown_sender_total" not in text and "rx_dropped_" not in text


class _Backend:
    name = "udp"

    def metrics(self):
        return {"udp_rx_dropped_bad_header_total": 2.0, "udp_drops_unknown_source_total": 1.0}


def test_agent_metrics_carry_build_and_lease_info():
    agent = Agent(SimpleNamespace())
    text = render_metrics(agent._metrics())
    assert 'flannel_build_info{version="%s",python="%s",backend=""} 1' % (__version__, platform.python_version()) \
        in text.splitlines()
    assert "flannel_lease_info" not in text and "\nflannel_up 0\n" in text
    agent.lease = SimpleNamespace(subnet="10.1.2.0/24", ipv6_subnet=None, reservation=False, expiration=1700000000,
                                  attrs=SimpleNamespace(public_ip="192.0.2.1", public_ipv6=None))
    agent.backend = _Backend()
    lines = render_metrics(agent._metrics()).splitlines()
    assert 'flannel_lease_info{node="%s",subnet="10.1.2.0/24",public_ip="192.0.2.1"} 1' % socket.gethostname() in lines
    assert 'flannel_build_info{version="%s",python="%s",backend="udp"} 1' % (__version__, platform.python_version()) \
        in lines
    assert 'flannel_udp_dropped_packets_total{direction="rx",reason="bad_header"} 2' in lines
    assert len([line for line in lines if line.startswith("# TYPE ")]) == len({
        line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")})
    # a dual-stack lease labels the IPv6 subnet and address too
    agent.lease = SimpleNamespace(subnet="10.1.2.0/24", ipv6_subnet="fc00:0:0:2::/64", reservation=False,
                                  expiration=1700000000,
                                  attrs=SimpleNamespace(public_ip="192.0.2.1", public_ipv6="fd00::1"))
    lines = render_metrics(agent._metrics()).splitlines()
    assert ('flannel_lease_info{node="%s",subnet="10.1.2.0/24",public_ip="192.0.2.1",ipv6_subnet="fc00:0:0:2::/64",'
            'public_ipv6="fd00::1"} 1' % socket.gethostname()) in lines
