"""flanneld flags: Go names and defaults, -flag/--flag/--flag=value, FLANNELD_* environment."""

from __future__ import annotations

import io
import logging
import re

import pytest

from pyflannel.cli import GlogFormatter, UsageError, main, parse_args


def test_defaults():
    o = parse_args([], {})
    assert o.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"
    assert o.etcd_prefix == "/coreos.com/network"
    assert o.etcd_api == "auto"
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert o.subnet_lease_renew_margin == 60
    assert o.subnet_lease_ttl == 86400
    assert o.ip_masq is False and o.iptables_forward_rules is True
    assert o.iptables_resync == 5
    assert (o.healthz_ip, o.healthz_port) == ("127.0.0.1", 0)  # Go: 0.0.0.0
    assert o.iface == [] and o.iface_regex == []


def test_go_flag_spellings():
    o = parse_args(["-etcd-endpoints", "http://a:1", "--etcd-prefix=/atomic.io/network", "-ip-masq",
                    "--iptables-forward-rules=false", "-healthz-port=8471", "--public-ip", "10.0.0.5",
                    "-v=3"], {})
    assert o.etcd_endpoints == "http://a:1"
    assert o.etcd_prefix == "/atomic.io/network"
    assert o.ip_masq is True and o.iptables_forward_rules is False
    assert o.healthz_port == 8471 and o.public_ip == "10.0.0.5" and o.v == 3


def test_repeatable_iface():
    o = parse_args(["--iface", "eth1", "-iface=10.0.0.1", "--iface-regex", "^en", "--iface-regex=^10\\."], {})
    assert o.iface == ["eth1", "10.0.0.1"]
    assert o.iface_regex == ["^en", "^10\\."]


def test_environment_and_command_line_precedence():
    env = {"FLANNELD_ETCD_ENDPOINTS": "http://env:2379", "FLANNELD_IP_MASQ": "true",
           "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30", "FLANNELD_IFACE": "eth0,eth1",
           "FLANNELD_ETCD_PREFIX": "/env/network", "FLANNELD_IPTABLES_FORWARD_RULES": "false"}
    o = parse_args(["--etcd-prefix", "/cli/network"], env)
    assert o.etcd_endpoints == "http://env:2379"
    assert o.ip_masq is True and o.iptables_forward_rules is False
    assert o.subnet_lease_renew_margin == 30
    assert o.iface == ["eth0", "eth1"]
    assert o.etcd_prefix == "/cli/network"  # the command line wins
    assert parse_args(["--iface", "lo"], env).iface == ["lo"]


@pytest.mark.parametrize("argv,words", [
    (["--subnet-lease-renew-margin", "0"], "between 1 and 1439"),
    (["--subnet-lease-renew-margin=1440"], "between 1 and 1439"),
    (["--healthz-port", "x"], "whole number"),
    (["--ip-masq=maybe"], "boolean"),
    (["--etcd-api", "v4"], "v2, v3, auto"),
    (["--no-such-flag"], "not defined"),
    (["--etcd-prefix"], "needs an argument"),
    (["stray"], "unexpected argument"),
])
def test_bad_flags(argv, words):
    with pytest.raises(UsageError) as err:
        parse_args(argv, {})
    assert words in str(err.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(UsageError) as err:
        parse_args([], {"FLANNELD_HEALTHZ_PORT": "eighty"})
    assert "FLANNELD_HEALTHZ_PORT" in str(err.value)


def test_main_exit_codes(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["--help"]) == 0
    assert "-etcd-endpoints" in capsys.readouterr().out
    assert main(["--subnet-lease-renew-margin=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flanneld: ")


def test_glog_line_format():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(GlogFormatter())
    logger = logging.getLogger("test.glog")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("hello %s", "world")
    line = stream.getvalue().rstrip("\n")
    assert re.match(r"^W\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ test_cli\.py:\d+\] hello world$", line), line


def test_public_ipv6_flag_and_environment():
    assert parse_args([], {}).public_ipv6 == ""
    assert parse_args(["--public-ipv6", "fd00::5"], {}).public_ipv6 == "fd00::5"
    assert parse_args(["-public-ipv6=fd00::6"], {}).public_ipv6 == "fd00::6"
    env = {"FLANNELD_PUBLIC_IPV6": "fd00::7", "FLANNELD_PUBLIC_IP": "10.0.0.7"}
    o = parse_args([], env)
    assert (o.public_ip, o.public_ipv6) == ("10.0.0.7", "fd00::7")
    assert parse_args(["--public-ipv6", "fd00::8"], env).public_ipv6 == "fd00::8"  # the command line wins
    with pytest.raises(UsageError) as err:
        parse_args(["--public-ipv6"], {})
    assert "needs an argument" in str(err.value)


def test_public_ipv6_in_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "-public-ipv6 string" in out
    assert out.index("-public-ip string") < out.index("-public-ipv6 string")
