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
