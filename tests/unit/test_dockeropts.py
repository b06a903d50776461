"""mk-docker-opts: byte-identical output to Go flanneld's mk-docker-opts.sh."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyflannel.dockeropts import main

ENV = b"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"

DEFAULT = (b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
           b'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
           b'DOCKER_OPT_MTU="--mtu=1472"\n'
           b'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_OPTS", raising=False)
    monkeypatch.delenv("MY_OPTS", raising=False)
    src = tmp_path / "subnet.env"
    src.write_bytes(ENV)
    return src, tmp_path / "docker_opts.env"


def run(files, *flags):
    src, dst = files
    assert main(["-f", str(src), "-d", str(dst), *flags]) == 0
    return dst.read_bytes()


def test_default_output_is_byte_identical(files):
    assert run(files) == DEFAULT


def test_individual_only(files):
    assert run(files, "-i") == (b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                                b'DOCKER_OPT_MTU="--mtu=1472"\n')


def test_combined_only_with_key(files):
    assert run(files, "-c", "-k", "MY_OPTS") == b'MY_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n'


def test_both_flags_mean_both(files):
    assert run(files, "-i", "-c") == DEFAULT
    assert run(files, "-ic") == DEFAULT


def test_no_ipmasq_option(files):
    assert run(files, "-m") == (b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
                                b'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n')


def test_flannel_masquerades_so_docker_does_not(files):
    src, _dst = files
    src.write_bytes(ENV.replace(b"FLANNEL_IPMASQ=false", b"FLANNEL_IPMASQ=true"))
    assert b'DOCKER_OPT_IPMASQ="--ip-masq=false"\n' in run(files)


def test_without_flannel_ipmasq_the_option_is_left_out(files):
    # mk-docker-opts.sh sets DOCKER_OPT_IPMASQ only when FLANNEL_IPMASQ is set
    src, _dst = files
    src.write_bytes(ENV.replace(b"FLANNEL_IPMASQ=false\n", b""))
    assert run(files) == (b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'
                          b'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n')


def test_without_flannel_subnet_exit_0_with_what_there_is(files):
    # mk-docker-opts.sh leaves --bip out and still exits 0
    src, _dst = files
    src.write_bytes(ENV.replace(b"FLANNEL_SUBNET=10.1.74.1/24\n", b""))
    assert run(files) == (b'DOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1472"\n'
                          b'DOCKER_OPTS=" --ip-masq=true --mtu=1472"\n')


def test_nothing_known_in_the_file_writes_an_empty_combined_option(files):
    src, _dst = files
    src.write_bytes(b"FLANNEL_NETWORK=10.1.0.0/16\n")
    assert run(files) == b'DOCKER_OPTS=""\n'
    assert run(files, "-i") == b""


def test_missing_env_file_is_one_line(tmp_path, capsys):
    assert main(["-f", str(tmp_path / "nope"), "-d", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_bad_ipmasq_value(files, capsys):
    src, dst = files
    src.write_bytes(ENV.replace(b"FLANNEL_IPMASQ=false", b"FLANNEL_IPMASQ=maybe"))
    assert main(["-f", str(src), "-d", str(dst)]) == 1
    assert "Invalid value of FLANNEL_IPMASQ: maybe" in capsys.readouterr().err


def test_console_script(files):
    src, dst = files
    exe = os.path.join(os.path.dirname(sys.executable), "mk-docker-opts")
    subprocess.run([exe, "-f", str(src), "-d", str(dst)], check=True)
    assert dst.read_bytes() == DEFAULT
    assert oct(dst.stat().st_mode & 0o777) == oct(0o644)


ENV6 = ENV.replace(b"FLANNEL_MTU=", b"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n"
                                    b"FLANNEL_MTU=")

DUAL = (b'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
        b'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
        b'DOCKER_OPT_IPV6="--ipv6"\n'
        b'DOCKER_OPT_IPV6_CIDR="--fixed-cidr-v6=fc00:0:0:3::1/64"\n'
        b'DOCKER_OPT_MTU="--mtu=1472"\n'
        b'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --ipv6 --fixed-cidr-v6=fc00:0:0:3::1/64 --mtu=1472"\n')


def test_dual_stack_adds_ipv6_options(files):
    src, _dst = files
    src.write_bytes(ENV6)
    assert run(files) == DUAL
    assert run(files, "-i") == DUAL[:DUAL.index(b"DOCKER_OPTS=")]
    assert run(files, "-c") == DUAL[DUAL.index(b"DOCKER_OPTS="):]
    assert run(files, "-c", "-m") == (b'DOCKER_OPTS=" --bip=10.1.74.1/24 --ipv6 --fixed-cidr-v6=fc00:0:0:3::1/64 '
                                      b'--mtu=1472"\n')


def test_ipv6_only_file_gives_ipv6_options_and_the_rest(files):
    src, _dst = files
    src.write_bytes(b"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\nFLANNEL_MTU=1450\n"
                    b"FLANNEL_IPMASQ=true\n")
    assert run(files) == (b'DOCKER_OPT_IPMASQ="--ip-masq=false"\n'
                          b'DOCKER_OPT_IPV6="--ipv6"\n'
                          b'DOCKER_OPT_IPV6_CIDR="--fixed-cidr-v6=fc00:0:0:3::1/64"\n'
                          b'DOCKER_OPT_MTU="--mtu=1450"\n'
                          b'DOCKER_OPTS=" --ip-masq=false --ipv6 --fixed-cidr-v6=fc00:0:0:3::1/64 --mtu=1450"\n')


def test_quoted_ipv6_subnet_and_only_network_line(files):
    src, _dst = files
    src.write_bytes(ENV6.replace(b"=fc00:0:0:3::1/64", b'="fc00:0:0:3::1/64"'))
    assert run(files) == DUAL
    # FLANNEL_IPV6_NETWORK alone (or an empty FLANNEL_IPV6_SUBNET) adds nothing
    src.write_bytes(ENV.replace(b"FLANNEL_MTU=", b"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=\nFLANNEL_MTU="))
    assert run(files) == DEFAULT


def test_ipv4_only_file_unchanged(files):
    assert run(files) == DEFAULT
    assert b"ipv6" not in run(files, "-i")


@pytest.mark.parametrize("bad", [b"banana", b"fc00:0:0:3::1", b"10.1.74.1/24", b"fc00:0:0:3::1/129",
                                 b"fc00::1/64,fd00::1/64", b"fe80::1%eth0/64", b"fc00::1/ 64", b"fc00::1/0x40"])
def test_bad_ipv6_subnet_is_one_line_and_writes_nothing(files, capsys, bad):
    src, dst = files
    src.write_bytes(ENV6.replace(b"fc00:0:0:3::1/64", bad))
    assert main(["-f", str(src), "-d", str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("mk-docker-opts: Invalid value of FLANNEL_IPV6_SUBNET: %s " % bad.decode())
    assert not dst.exists()


def test_bad_ipv6_subnet_keeps_an_existing_output_file(files, capsys):
    src, dst = files
    assert run(files) == DEFAULT
    src.write_bytes(ENV6.replace(b"fc00:0:0:3::1/64", b"banana"))
    assert main(["-f", str(src), "-d", str(dst)]) == 1
    assert dst.read_bytes() == DEFAULT
