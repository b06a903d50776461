"""subnet.env: Go flanneld's content, atomic write, mode 0644."""

from __future__ import annotations

import ipaddress
import os

import pytest

from pyflannel import subnetenv
from pyflannel.subnet import read_subnet_file


def test_render_matches_go():
    text = subnetenv.render(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv4Network("10.100.42.0/24"),
                            1450, False)
    assert text == ("FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.42.1/24\nFLANNEL_MTU=1450\n"
                    "FLANNEL_IPMASQ=false\n")
    assert subnetenv.render(ipaddress.IPv4Network("10.1.0.0/16"), ipaddress.IPv4Network("10.1.74.0/24"),
                            1472, True).endswith("FLANNEL_IPMASQ=true\n")


def test_write_atomic_mode_and_readback(tmp_path):
    old = os.umask(0o077)
    try:
        path = tmp_path / "run" / "flannel" / "subnet.env"
        subnetenv.write(str(path), ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv4Network("10.100.0.128/25"),
                        1500, False)
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert subnetenv.read(str(path))["FLANNEL_SUBNET"] == "10.100.0.129/25"
    assert read_subnet_file(str(path)) == ipaddress.IPv4Network("10.100.0.128/25")
    assert sorted(os.listdir(path.parent)) == ["subnet.env"]  # no temporary file left behind


def test_rewrite_replaces_whole_file(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=1.2.3.1/24\nGARBAGE=" + "x" * 1000 + "\n")
    subnetenv.write(str(path), ipaddress.IPv4Network("10.1.0.0/16"), ipaddress.IPv4Network("10.1.2.0/24"), 1450, True)
    assert "GARBAGE" not in path.read_text()


def test_parse_quotes_export_comments():
    assert subnetenv.parse('# c\nexport A="1"\nB=\'2\'\n C = 3 \nnoequals\n') == {"A": "1", "B": "2", "C": "3"}


def test_read_subnet_file_missing_or_bad(tmp_path):
    assert read_subnet_file(None) is None
    assert read_subnet_file(str(tmp_path / "none")) is None
    bad = tmp_path / "bad.env"
    bad.write_text("FLANNEL_SUBNET=banana\n")
    assert read_subnet_file(str(bad)) is None


V4_NET = ipaddress.IPv4Network("10.100.0.0/16")
V4_SUB = ipaddress.IPv4Network("10.100.42.0/24")
V6_NET = ipaddress.IPv6Network("fc00::/48")
V6_SUB = ipaddress.IPv6Network("fc00:0:0:3::/64")


def test_render_dual_stack_in_go_order():
    # Go v0.20 WriteSubnetFile: IPv4 lines, then the IPv6 lines, then MTU and IPMASQ
    assert subnetenv.render(V4_NET, V4_SUB, 1450, False, ipv6_network=V6_NET, ipv6_subnet=V6_SUB) == (
        "FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.42.1/24\n"
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


def test_render_ipv6_only_leaves_the_ipv4_lines_out():
    assert subnetenv.render(None, None, 1430, True, ipv6_network=V6_NET, ipv6_subnet=V6_SUB) == (
        "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n"
        "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n")


def test_render_ipv6_text_is_compressed_lower_case():
    text = subnetenv.render(None, None, 1450, False, ipv6_network=ipaddress.IPv6Network("FD00:0:0:0::/56"),
                            ipv6_subnet=ipaddress.IPv6Network("FD00:0000:0000:00AB::/64"))
    assert "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:ab::1/64\n" in text


def test_render_ipv4_only_unchanged_with_explicit_none():
    expected = ("FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.42.1/24\nFLANNEL_MTU=1450\n"
                "FLANNEL_IPMASQ=false\n")
    assert subnetenv.render(V4_NET, V4_SUB, 1450, False) == expected
    assert subnetenv.render(V4_NET, V4_SUB, 1450, False, ipv6_network=None, ipv6_subnet=None) == expected


@pytest.mark.parametrize("args, kwargs", [
    ((None, None), {}),                                    # no family at all
    ((V4_NET, None), {}),                                  # IPv4 network without subnet
    ((None, V4_SUB), {"ipv6_network": V6_NET, "ipv6_subnet": V6_SUB}),
    ((V4_NET, V4_SUB), {"ipv6_network": V6_NET}),          # IPv6 network without subnet
    ((None, None), {"ipv6_subnet": V6_SUB}),
    ((V4_NET, V4_SUB), {"ipv6_network": V4_NET, "ipv6_subnet": V4_SUB}),  # wrong family
    ((V6_NET, V6_SUB), {}),
])
def test_render_rejects_missing_or_half_families(args, kwargs):
    with pytest.raises(ValueError):
        subnetenv.render(*args, 1450, False, **kwargs)


def test_write_ipv6_only_and_bad_call_leaves_old_file(tmp_path):
    path = tmp_path / "subnet.env"
    subnetenv.write(str(path), None, None, 1450, False, ipv6_network=V6_NET, ipv6_subnet=V6_SUB)
    assert path.read_text() == ("FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n"
                                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(ValueError):
        subnetenv.write(str(path), None, None, 1450, False)
    assert "FLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64" in path.read_text()
    assert sorted(os.listdir(tmp_path)) == ["subnet.env"]


def test_previous_subnets_round_trip(tmp_path):
    path = tmp_path / "subnet.env"
    subnetenv.write(str(path), V4_NET, V4_SUB, 1450, False, ipv6_network=V6_NET, ipv6_subnet=V6_SUB)
    assert subnetenv.previous_subnets(str(path)) == (V4_SUB, V6_SUB)
    subnetenv.write(str(path), None, None, 1450, False, ipv6_network=V6_NET, ipv6_subnet=V6_SUB)
    assert subnetenv.previous_subnets(str(path)) == (None, V6_SUB)
    subnetenv.write(str(path), V4_NET, V4_SUB, 1450, False)
    assert subnetenv.previous_subnets(str(path)) == (V4_SUB, None)


def test_previous_subnets_quotes_export_and_comments(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text('# written by hand\nexport FLANNEL_SUBNET="10.1.74.1/24"\n'
                    "FLANNEL_IPV6_SUBNET='FC00:0:0:3::1/64'\n")
    assert subnetenv.previous_subnets(str(path)) == (ipaddress.IPv4Network("10.1.74.0/24"), V6_SUB)


@pytest.mark.parametrize("v4, v6, expected", [
    ("banana", "fc00:0:0:3::1/64", (None, V6_SUB)),
    ("10.1.74.1/24", "banana", (ipaddress.IPv4Network("10.1.74.0/24"), None)),
    ("10.1.74.1", "fc00:0:0:3::1", (None, None)),                  # no prefix length
    ("fc00:0:0:3::1/64", "10.1.74.1/24", (None, None)),             # families swapped
    ("10.1.74.1/33", "fc00:0:0:3::1/129", (None, None)),
    ("10.1.74.1/24,10.2.0.1/24", "fc00::1/64,fd00::1/64", (None, None)),
    ("", "", (None, None)),
])
def test_previous_subnets_bad_line_gives_none_for_its_family(tmp_path, v4, v6, expected):
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_SUBNET=%s\nFLANNEL_IPV6_SUBNET=%s\nFLANNEL_MTU=1450\n" % (v4, v6))
    assert subnetenv.previous_subnets(str(path)) == expected


def test_previous_subnets_missing_garbage_or_unreadable(tmp_path):
    assert subnetenv.previous_subnets(None) == (None, None)
    assert subnetenv.previous_subnets(str(tmp_path / "none")) == (None, None)
    assert subnetenv.previous_subnets(str(tmp_path)) == (None, None)  # a directory
    junk = tmp_path / "junk.env"
    junk.write_bytes(b"\xff\xfe\x00garbage\nFLANNEL_SUBNET\n=\n")
    assert subnetenv.previous_subnets(str(junk)) == (None, None)


PROBE = r"""
import resource, signal, sys
from pyflannel import subnetenv
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    subnetenv.check_writable(sys.argv[1])
except OSError as err:
    print(err)
    sys.exit(1)
"""


def test_check_writable_writes_real_bytes(tmp_path):
    """A file system that takes a new directory entry but not the data (a full disk; here a file-size
    limit below the probe) fails the check, naming the path; no probe file stays behind."""
    import subprocess
    import sys

    path = str(tmp_path / "run" / "subnet.env")
    ok = subprocess.run([sys.executable, "-c", PROBE, path, str(subnetenv.PROBE_BYTES)], capture_output=True,
                        text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    small = subprocess.run([sys.executable, "-c", PROBE, path, "1024"], capture_output=True, text=True, timeout=60,
                           check=False)
    assert small.returncode == 1, small.stdout + small.stderr
    line = small.stdout.strip()
    assert "\n" not in line and line.startswith("--subnet-file %s cannot be written" % path), line
    assert "too large" in line.lower(), line
    assert os.listdir(str(tmp_path / "run")) == []


def test_check_writable_names_the_path_for_a_directory_and_a_file_in_the_way(tmp_path):
    with pytest.raises(OSError) as err:
        subnetenv.check_writable(str(tmp_path))
    assert "is a directory" in str(err.value)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OSError) as err:
        subnetenv.check_writable(str(tmp_path / "plain" / "subnet.env"))
    assert str(tmp_path / "plain" / "subnet.env") in str(err.value) and "not a directory" in str(err.value)
