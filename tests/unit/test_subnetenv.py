"""subnet.env: Go flanneld's content, atomic write, mode 0644."""

from __future__ import annotations

import ipaddress
import os

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
