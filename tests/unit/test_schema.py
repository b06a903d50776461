"""The network-config schema: Go flanneld's rules, defaults and one-line errors."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.netconfig import BACKEND_OPTIONS, ConfigError, NetworkConfig, parse_config


def test_fixed_example_defaults():
    cfg = parse_config('{"Network": "10.3.0.0/16"}')
    assert cfg.subnet_len == 24
    assert str(cfg.subnet_min) == "10.3.1.0"
    assert str(cfg.subnet_max) == "10.3.255.0"
    assert cfg.capacity() == 255
    assert cfg.backend_type == "udp"  # Go's code default, despite its docs


def test_seed_000_three_subnets():
    cfg = parse_config({"Network": "10.100.0.0/16", "SubnetLen": 25, "SubnetMin": "10.100.0.0",
                        "SubnetMax": "10.100.1.0", "Backend": {"Type": "vxlan"}})
    assert [str(s) for s in cfg.subnets()] == ["10.100.0.0/25", "10.100.0.128/25", "10.100.1.0/25"]
    assert cfg.contains(ipaddress.IPv4Network("10.100.1.0/25"))
    assert not cfg.contains(ipaddress.IPv4Network("10.100.1.128/25"))
    assert cfg.option("VNI") == 1


@pytest.mark.parametrize("network,expected", [
    ("10.0.0.0/8", 24), ("10.0.0.0/22", 24), ("10.0.0.0/23", 25), ("10.0.0.0/26", 28), ("10.0.0.0/28", 30),
])
def test_default_subnet_len(network, expected):
    assert parse_config({"Network": network}).subnet_len == expected


def test_case_insensitive_keys():
    cfg = parse_config('{"network": "10.5.0.0/16", "subnetlen": 26, "backend": {"type": "host-gw"}}')
    assert (str(cfg.network), cfg.subnet_len, cfg.backend_type) == ("10.5.0.0/16", 26, "host-gw")


@pytest.mark.parametrize("config,words", [
    ({}, "Network is missing"),
    ({"Network": "10.0.0.0/29"}, "/28 or shorter"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 31}, "30 or less"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 17}, "prefix + 2"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "outside Network"),
    ({"Network": "10.0.0.0/16", "SubnetMax": "10.0.3.7"}, "boundary"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"}, "above SubnetMax"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "bogus"}}, "not a backend"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": -1}}, "between"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "udp", "VNI": 2}}, "not an option of the udp backend"),
    ({"Network": "banana"}, "needs a prefix length"),
    ({"Network": "10.0.0.0/16", "bad\nkey": 1}, "unknown key"),
    ("{not json", "not valid JSON"),
])
def test_errors_are_one_line(config, words):
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    text = str(err.value)
    assert words in text
    assert "\n" not in text


# -- property test: every input parses to a valid config or fails with one ConfigError line ----------
_ips = st.one_of(
    st.builds(lambda a, b, c, d: "%d.%d.%d.%d" % (a, b, c, d), *[st.integers(0, 300)] * 4),
    st.sampled_from(["10.100.0.0", "10.100.1.0", "10.100.1.128", "0.0.0.0", "", "::1", "10.0.0.0/8"]),
    st.text(max_size=12),
)
_cidrs = st.one_of(
    st.builds(lambda ip, n: "%s/%d" % (ip, n), _ips, st.integers(-2, 40)),
    st.sampled_from(["10.100.0.0/16", "10.3.0.0/16", "10.0.0.0/29", "10.0.0.0/28", "fd00::/64", "10.0.0.0"]),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-100, 100), st.integers(),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), _ips)
_any = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=6)


def _case(name):
    return st.sampled_from([name, name.lower(), name.upper()])


_backend = st.one_of(
    _any,
    st.fixed_dictionaries({}, optional={
        "Type": st.one_of(st.sampled_from(["udp", "vxlan", "host-gw", "alloc", "VXLAN", "ipip", "", "x"]), _any),
        "VNI": st.one_of(st.integers(-5, 17000000), _any),
        "Port": st.one_of(st.integers(-5, 70000), _any),
        "MTU": st.one_of(st.integers(0, 70000), _any),
        "DirectRouting": st.one_of(st.booleans(), _any),
        "GBP": st.booleans(), "Learning": st.booleans(), "MacPrefix": _any,
    }),
)
_configs = st.one_of(
    _any,
    st.fixed_dictionaries({}, optional={
        "Network": st.one_of(_cidrs, _any),
        "SubnetLen": st.one_of(st.integers(-3, 40), st.floats(), _any),
        "SubnetMin": st.one_of(_ips, _any),
        "SubnetMax": st.one_of(_ips, _any),
        "Backend": _backend,
        "EnableIPv6": _any,
        "Bogus": _any,
    }),
)


def _rename(config, data):
    """Randomly change the case of the top-level keys (Go matches them case-insensitively)."""
    if not isinstance(config, dict):
        return config
    return {data.draw(_case(k)) if k != "Bogus" else k: v for k, v in config.items()}


def _check(result):
    assert isinstance(result, NetworkConfig)
    net = result.network
    assert result.subnet_len <= 30
    assert result.subnet_len >= net.prefixlen + 2
    size = 1 << (32 - result.subnet_len)
    for addr in (result.subnet_min, result.subnet_max):
        assert addr in net
        assert int(addr) % size == 0
    assert result.subnet_min <= result.subnet_max
    assert result.capacity() >= 1
    assert result.backend_type in BACKEND_OPTIONS
    assert set(result.backend) == set(BACKEND_OPTIONS[result.backend_type])
    # the effective config round-trips through the schema unchanged
    assert parse_config(result.to_json()) == result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs, as_text=st.booleans(), data=st.data())
def test_property_parse_or_one_line_error(config, as_text, data):
    config = _rename(config, data)
    if as_text:
        try:
            config = json.dumps(config)
        except (TypeError, ValueError):
            return
    try:
        result = parse_config(config)
    except ConfigError as err:
        text = str(err)
        assert text and "\n" not in text, text
        return
    _check(result)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.binary(max_size=40),
                      st.sampled_from(['{"Network":"10.0.0.0/8","SubnetLen":Infinity}',
                                       '{"Network":"10.0.0.0/8","SubnetLen":NaN}',
                                       '{"Network":"10.0.0.0/8","SubnetLen":1e400}',
                                       '{"Network":"10.0.0.0/8","SubnetLen":-Infinity}'])))
def test_property_arbitrary_text(text):
    try:
        result = parse_config(text)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    _check(result)
