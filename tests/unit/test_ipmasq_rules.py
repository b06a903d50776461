"""The rule sets of pyflannel.ipmasq for both address families, and its one-line errors — no kernel
tables are touched (the real ones are exercised in tests/integration/test_ipmasq.py)."""

from __future__ import annotations

import ipaddress
import stat

import pytest

from pyflannel.ipmasq import IPTables, IPTablesError

MASQ = '-m comment --comment "flanneld masq"'
FWD = '-m comment --comment "flanneld forward"'


def v4() -> IPTables:
    return IPTables(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv4Network("10.100.5.0/24"), True, True)


def v6() -> IPTables:
    return IPTables(ipaddress.IPv6Network("fd00:100::/48"), ipaddress.IPv6Network("fd00:100:0:5::/64"), True, True)


def test_ipv4_rules_are_unchanged() -> None:
    t = v4()
    assert (t.family, t.tool, t.restore.rsplit("/", 1)[-1], t.save.rsplit("/", 1)[-1]) == (
        4, "iptables", "iptables-restore", "iptables-save")
    assert t.rules() == {
        "nat": [
            "-A POSTROUTING %s -j FLANNEL-POSTRTG" % MASQ,
            "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 %s -j RETURN" % MASQ,
            "-A FLANNEL-POSTRTG -s 10.100.5.0/24 -d 10.100.0.0/16 %s -j RETURN" % MASQ,
            "-A FLANNEL-POSTRTG -s 10.100.0.0/16 -d 10.100.5.0/24 %s -j RETURN" % MASQ,
            "-A FLANNEL-POSTRTG ! -s 10.100.0.0/16 -d 10.100.5.0/24 %s -j RETURN" % MASQ,
            "-A FLANNEL-POSTRTG -s 10.100.0.0/16 ! -d 224.0.0.0/4 %s -j MASQUERADE --random-fully" % MASQ,
            "-A FLANNEL-POSTRTG ! -s 10.100.0.0/16 -d 10.100.0.0/16 %s -j MASQUERADE --random-fully" % MASQ,
        ],
        "filter": [
            "-A FORWARD %s -j FLANNEL-FWD" % FWD,
            "-A FLANNEL-FWD -s 10.100.0.0/16 %s -j ACCEPT" % FWD,
            "-A FLANNEL-FWD -d 10.100.0.0/16 %s -j ACCEPT" % FWD,
        ],
    }


def test_ipv6_rules_have_the_same_shape_with_ff00() -> None:
    t = v6()
    assert (t.family, t.tool, t.restore.rsplit("/", 1)[-1], t.save.rsplit("/", 1)[-1]) == (
        6, "ip6tables", "ip6tables-restore", "ip6tables-save")
    c, p = "fd00:100::/48", "fd00:100:0:5::/64"
    expected = [line.replace("10.100.0.0/16", c).replace("10.100.5.0/24", p).replace("224.0.0.0/4", "ff00::/8")
                for table in ("nat", "filter") for line in v4().rules()[table]]
    assert [line for table in ("nat", "filter") for line in t.rules()[table]] == expected
    t.random_fully = False
    assert t.masq_rules()[4] == "-A FLANNEL-POSTRTG -s %s ! -d ff00::/8 %s -j MASQUERADE" % (c, MASQ)


def test_family_is_derived_and_strings_are_accepted() -> None:
    t = IPTables("fd00:100::/48", "fd00:100:0:5::/64", False, True)  # type: ignore[arg-type]
    assert t.family == 6 and t.network == ipaddress.IPv6Network("fd00:100::/48")
    assert list(t.rules()) == ["filter"]


def test_mixed_families_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="different address families") as err:
        IPTables(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd00:100:0:5::/64"), True, True)
    assert "\n" not in str(err.value)


def test_missing_ip6tables_says_what_to_install(tmp_path) -> None:
    t = v6()
    t.save = str(tmp_path / "ip6tables-save")
    with pytest.raises(IPTablesError) as err:
        t.ensure()
    text = str(err.value)
    assert "\n" not in text
    assert "is not installed: install the iptables package" in text and "IPv6" in text and "ip6tables" in text


def test_ipv6_nat_failure_names_ip6tables_nat_support(tmp_path) -> None:
    fake = tmp_path / "ip6tables-save"
    fake.write_text("#!/bin/sh\necho \"ip6tables-save v1.8.9: Table does not exist (do you need to insmod?)\" >&2\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    t = v6()
    t.save = str(fake)
    with pytest.raises(IPTablesError) as err:
        t.ensure()
    text = str(err.value)
    assert "\n" not in text and "Table does not exist" in text and "ip6tables nat support" in text
    # the same failure for IPv4 carries no IPv6 hint
    t4 = v4()
    t4.save = str(fake)
    with pytest.raises(IPTablesError) as err4:
        t4.ensure()
    assert "IPv6" not in str(err4.value)


def test_random_fully_is_detected_per_family(tmp_path) -> None:
    """An ip6tables without MASQUERADE --random-fully falls back to plain MASQUERADE; IPv4 keeps it."""
    save = tmp_path / "ip6tables-save"
    save.write_text("#!/bin/sh\necho '*nat'\necho ':POSTROUTING ACCEPT [0:0]'\necho COMMIT\n")
    restore = tmp_path / "ip6tables-restore"
    restore.write_text("#!/bin/sh\nif grep -q random-fully; then echo 'unknown option \"--random-fully\"' >&2; "
                       "exit 2; fi\nexit 0\n")
    for f in (save, restore):
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    t6, t4 = v6(), v4()
    t6.save, t6.restore, t6.forward = str(save), str(restore), False
    assert t6.ensure() is True
    assert t6.random_fully is False and t4.random_fully is True
    assert t6.masq_rules()[-1].endswith("-j MASQUERADE")
