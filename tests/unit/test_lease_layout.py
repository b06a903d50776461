"""Lease keys and values: byte for byte what Go flanneld writes (literal strings from FLANNEL_FACTS.md)."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.leases import (
    LeaseAttrs,
    LeaseFormatError,
    config_key,
    decode_lease,
    encode_lease,
    parse_subnet_key,
    subnet_key,
    subnets_dir,
)

MAC = "7a:fd:a9:52:84:87"

V2_VXLAN = '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:87"}}'
V2_HOSTGW = '{"PublicIP":"192.0.2.1","BackendType":"host-gw"}'
V2_UDP = '{"PublicIP":"192.0.2.1"}'
V3_VXLAN = ('{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"7a:fd:a9:52:84:87"}}')
V3_HOSTGW = '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}'
V3_UDP = '{"PublicIP":"192.0.2.1","PublicIPv6":null}'


def test_keys():
    net = ipaddress.IPv4Network("10.100.42.0/24")
    assert subnet_key("/coreos.com/network", net) == "/coreos.com/network/subnets/10.100.42.0-24"
    assert subnet_key("coreos.com/network/", net) == "/coreos.com/network/subnets/10.100.42.0-24"
    assert config_key("/atomic.io/network") == "/atomic.io/network/config"
    assert subnets_dir("/coreos.com/network") == "/coreos.com/network/subnets/"
    assert parse_subnet_key("/coreos.com/network/subnets/10.100.42.0-24") == (net, None)
    assert parse_subnet_key("10.12.13.0-24&fd00:12:13::-56") == (
        ipaddress.IPv4Network("10.12.13.0/24"), ipaddress.IPv6Network("fd00:12:13::/56"))


@pytest.mark.parametrize("key", ["10.12.13.300-24", "10.12.13.0-24hi", "10.12.13.0", "10.12.13.1-24",
                                 "10.12.13.0-33", "x10.12.13.0-24", "10.12.13.0-24&zz-56", ""])
def test_bad_keys_rejected(key):
    with pytest.raises(LeaseFormatError):
        parse_subnet_key(key)


def test_encode_v2_matches_go_v0_11():
    assert encode_lease(LeaseAttrs("192.0.2.1", "vxlan", {"VNI": 1, "VtepMAC": MAC}), "v2") == V2_VXLAN
    assert encode_lease(LeaseAttrs("192.0.2.1", "host-gw"), "v2") == V2_HOSTGW
    assert encode_lease(LeaseAttrs("192.0.2.1", ""), "v2") == V2_UDP
    assert encode_lease(LeaseAttrs("192.0.2.1", "alloc"), "v2") == V2_UDP  # alloc: no BackendType


def test_encode_v3_matches_current_go():
    assert encode_lease(LeaseAttrs("192.0.2.1", "vxlan", {"VNI": 1, "VtepMAC": MAC}), "v3") == V3_VXLAN
    assert encode_lease(LeaseAttrs("192.0.2.1", "host-gw"), "v3") == V3_HOSTGW
    assert encode_lease(LeaseAttrs("192.0.2.1", ""), "v3") == V3_UDP


@pytest.mark.parametrize("text", [V2_VXLAN, V3_VXLAN,
                                  '{"publicip":"192.0.2.1","backendtype":"vxlan","backenddata":{"vtepmac":'
                                  '"7A:FD:A9:52:84:87"}}',
                                  '{"PUBLICIP":"192.0.2.1","PublicIPv6":null,"BACKENDTYPE":"vxlan",'
                                  '"BackendData":{"vni":1,"VTEPMAC":"7a:fd:a9:52:84:87"}}'])
def test_decode_vxlan_every_shape(text):
    attrs = decode_lease(text)
    assert attrs.public_ip == "192.0.2.1"
    assert attrs.backend_type == "vxlan"
    assert attrs.vtep_mac == MAC


@pytest.mark.parametrize("text,kind", [(V2_HOSTGW, "host-gw"), (V3_HOSTGW, "host-gw"), (V2_UDP, "udp"),
                                       (V3_UDP, "udp"), ('{"publicIP":"192.0.2.1"}', "udp")])
def test_decode_other_shapes(text, kind):
    attrs = decode_lease(text)
    assert (attrs.public_ip, attrs.effective_type) == ("192.0.2.1", kind)


def test_round_trip_between_apis():
    for text in (V2_VXLAN, V2_HOSTGW, V2_UDP):
        assert encode_lease(decode_lease(text), "v2") == text
    for text in (V3_HOSTGW, V3_UDP, V3_VXLAN):
        assert encode_lease(decode_lease(text), "v3") == text


@pytest.mark.parametrize("text", ["", "null", "[]", '{"PublicIP":"300.1.1.1"}', '{"BackendType":"udp"}',
                                  '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"xx"}}',
                                  '{"PublicIP":"192.0.2.1","BackendData":[1]}'])
def test_bad_values_rejected(text):
    with pytest.raises(LeaseFormatError) as err:
        decode_lease(text)
    assert "\n" not in str(err.value)
