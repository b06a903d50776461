"""Real ``flanneld`` processes (alloc backend, no datapath) against a real etcd, v2 and v3.

Each fake node runs in the root namespace with ``--iface lo`` and its own ``--public-ip 127.0.0.x``;
``--iptables-forward-rules=false`` keeps the machine's iptables untouched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pyflannel import etcdstore
from pyflannel.leases import LeaseAttrs, encode_lease
from pyflannel.subnet import read_subnet_file
from testbed.etcdserver import EtcdServer, free_port

ROOT = Path(__file__).resolve().parents[2]
FLANNELD = str(ROOT / ".venv" / "bin" / "flanneld")
SEED_000 = ('{"Network":"10.100.0.0/16","SubnetLen":25,"SubnetMin":"10.100.0.0","SubnetMax":"10.100.1.0",'
            '"Backend":{"Type":"alloc"}}')
BIG = '{"Network":"10.100.0.0/16","Backend":{"Type":"alloc"}}'


class Flanneld:
    def __init__(self, workdir: Path, name: str, endpoints: str, api: str, prefix: str, public_ip: str,
                 extra=(), env=None, iface="lo"):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.subnet_file = self.dir / "subnet.env"
        self.log_path = self.dir / "flanneld.log"
        self.args = [FLANNELD, "--etcd-endpoints", endpoints, "--etcd-api", api, "--etcd-prefix", prefix,
                     "--iface", iface, "--public-ip", public_ip, "--subnet-file", str(self.subnet_file),
                     "--iptables-forward-rules=false", *extra]
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc = None
        self.start()

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None and text not in self.log():
                break
            time.sleep(0.1)
        raise AssertionError("%r not logged within %.0f s; log:\n%s" % (text, timeout, self.log()[-3000:]))

    def wait_subnet(self, timeout: float = 15.0) -> ipaddress.IPv4Network:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            subnet = read_subnet_file(str(self.subnet_file))
            if subnet is not None:
                return subnet
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("no subnet file within %.0f s; log:\n%s" % (timeout, self.log()[-3000:]))

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("flanneld did not exit within %.0f s; log:\n%s"
                                 % (timeout, self.log()[-3000:])) from None

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(10)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cpu_seconds(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def store(etcd_server, etcd_api):
    s = etcdstore.connect(etcd_server.url, api=etcd_api)
    yield s
    s.close()


def http_get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_seed_000_four_nodes_and_subnetmax_raise(agents, store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", SEED_000)
    nodes = [agents("n%d" % i, etcd_server.url, etcd_api, etcd_prefix, "127.0.0.%d" % (101 + i)) for i in range(3)]
    subnets = sorted(str(n.wait_subnet()) for n in nodes)
    assert subnets == ["10.100.0.0/25", "10.100.0.128/25", "10.100.1.0/25"]
    fourth = agents("n3", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.104")
    fourth.wait_log("out of subnets")
    time.sleep(1.5)
    assert fourth.proc.poll() is None and not fourth.subnet_file.exists()  # keeps retrying
    store.put(etcd_prefix + "/config", SEED_000.replace('"SubnetMax":"10.100.1.0"', '"SubnetMax":"10.100.1.128"'))
    raised = time.monotonic()
    assert str(fourth.wait_subnet(10)) == "10.100.1.128/25"
    assert time.monotonic() - raised < 5
    text = fourth.subnet_file.read_text()
    assert text == ("FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.1.129/25\nFLANNEL_MTU=65536\n"
                    "FLANNEL_IPMASQ=false\n")
    assert oct(fourth.subnet_file.stat().st_mode & 0o777) == oct(0o644)
    kvs, _revision = store.list(etcd_prefix + "/subnets/")
    assert sorted(kv.key.rsplit("/", 1)[1] for kv in kvs) == [
        "10.100.0.0-25", "10.100.0.128-25", "10.100.1.0-25", "10.100.1.128-25"]
    by_key = {kv.key.rsplit("/", 1)[1]: kv.value for kv in kvs}
    shape = '{"PublicIP":"127.0.0.104"}' if etcd_api == "v2" else '{"PublicIP":"127.0.0.104","PublicIPv6":null}'
    assert by_key["10.100.1.128-25"] == shape
    for node in [*nodes, fourth]:
        assert node.stop() == 0
    kvs, _revision = store.list(etcd_prefix + "/subnets/")
    assert len(kvs) == 4  # a clean stop keeps the lease


def test_restart_reuses_lease_healthz_and_failover(agents, store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    dead = "http://127.0.0.1:%d" % free_port()
    port = free_port()
    # endpoints from the environment (FLANNELD_ETCD_ENDPOINTS), the first one dead: failover
    node = agents("a", "unused", etcd_api, etcd_prefix, "127.0.0.111",
                  extra=["--healthz-ip", "127.0.0.1", "--healthz-port", str(port)],
                  env={"FLANNELD_ETCD_ENDPOINTS": "%s,%s" % (dead, etcd_server.url)})
    node.args.remove("--etcd-endpoints")
    node.args.remove("unused")
    node.kill()
    node.start()
    subnet = node.wait_subnet()
    node.wait_log("running with lease")
    status, body = http_get(port, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["subnet"] == str(subnet) and health["backend"]["backend"] == "alloc"
    assert health["lease_expiration"] > time.time() + 86000
    assert http_get(port, "/readyz")[0] == 200
    status, metrics = http_get(port, "/metrics")
    assert status == 200
    for name in ("flannel_lease_expiry_timestamp_seconds", "flannel_remote_leases", "flannel_lease_renewals_total",
                 "flannel_etcd_errors_total"):
        assert "\n%s " % name in metrics
    assert node.stop(signal.SIGINT) == 0
    # restart without the subnet file: the lease is found again by PublicIP
    node.subnet_file.unlink()
    node.start()
    assert node.wait_subnet() == subnet
    node.wait_log("reusing it")
    assert node.stop() == 0


def test_lease_deleted_is_written_back_taken_exits_non_zero(agents, store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    # -v=1: each lease event is a debug line (at INFO they are summed up once a minute)
    a = agents("a", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.121", extra=["-v=1"])
    b = agents("b", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.122")
    sa, sb = a.wait_subnet(), b.wait_subnet()
    a.wait_log("%s of 127.0.0.122" % sb)  # "lease added: ..." or, if b was first, "... is present"
    b.wait_log("%s of 127.0.0.121" % sa)
    assert "%s of 127.0.0.121" % sa not in a.log().split("running with lease", 1)[1]  # never our own
    key_b = etcd_prefix + "/subnets/%s-%d" % (sb.network_address, sb.prefixlen)
    # deleted behind b's back: b writes it back with the same subnet and keeps running
    store.delete(key_b)
    b.wait_log("wrote it back to etcd with the same subnet")
    kv = store.get(key_b)
    assert kv is not None and '"PublicIP":"127.0.0.122"' in kv.value
    assert b.proc.poll() is None
    # taken over by another node: b's lease is lost, exit 1 (Go exits 0; Restart=on-failure needs non-zero)
    store.put(key_b, encode_lease(LeaseAttrs("127.0.0.99", ""), etcd_api))
    assert b.wait_exit(15) == 1
    assert "was overwritten by 127.0.0.99" in b.log()
    a.wait_log("lease added: %s of 127.0.0.99" % sb)
    assert a.proc.poll() is None
    assert a.stop() == 0


def test_short_ttl_is_renewed(agents, store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    node = agents("r", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.131", extra=["--subnet-lease-ttl", "2"])
    subnet = node.wait_subnet()
    key = etcd_prefix + "/subnets/%s-%d" % (subnet.network_address, subnet.prefixlen)
    time.sleep(5)  # more than twice the TTL
    kv = store.get(key)
    assert kv is not None and kv.has_ttl
    remaining = store.remaining_ttl(kv)
    assert remaining is not None and 0 <= remaining <= 2  # still a TTL key, not a reservation
    assert node.log().count("renewed lease") >= 2
    assert node.stop() == 0


def test_missing_config_then_success(agents, store, etcd_server, etcd_api, etcd_prefix):
    node = agents("m", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.141")
    node.wait_log("no network config at %s/config — create it with the flannel_network module or etcdctl"
                  % etcd_prefix)
    time.sleep(1.2)
    assert node.proc.poll() is None
    store.put(etcd_prefix + "/config", SEED_000)
    assert node.wait_subnet(10).subnet_of(ipaddress.IPv4Network("10.100.0.0/16"))
    assert node.stop() == 0


def test_unreachable_etcd_backs_off_then_connects(agents, etcd_api, tmp_path):
    port = free_port()
    prefix = "/unreach/coreos.com/network"
    node = agents("u", "http://127.0.0.1:%d" % port, etcd_api, prefix, "127.0.0.151")
    node.wait_log("etcd is unreachable")
    cpu_before = node.cpu_seconds()
    time.sleep(4)
    assert node.proc.poll() is None
    assert node.cpu_seconds() - cpu_before < 1.0  # back-off, no spin
    server = EtcdServer(port=port).start()
    try:
        etcdstore.connect(server.url, api="v3" if etcd_api == "v3" else "v2").put(prefix + "/config", BIG)
        node.wait_subnet(20)
        assert node.stop() == 0
    finally:
        node.kill()
        server.destroy()


def test_bad_flags_and_bad_iface_are_one_line(agents, store, etcd_server, etcd_api, etcd_prefix):
    proc = subprocess.run([FLANNELD, "--subnet-lease-renew-margin", "1440"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    node = agents("i", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.161", iface="nosuchif0")
    store.put(etcd_prefix + "/config", BIG)
    assert node.wait_exit() == 1
    errors = [line for line in node.log().splitlines() if line.startswith("E")]
    assert len(errors) == 1 and "no interface matches --iface nosuchif0" in errors[0]


def test_ready_notification_after_subnet_file(agents, store, etcd_server, etcd_api, etcd_prefix, tmp_path):
    import socket

    store.put(etcd_prefix + "/config", BIG)
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        node = agents("s", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.171")
        node.kill()
        node.env["NOTIFY_SOCKET"] = path
        node.start()
        message = sock.recv(4096)
        assert message == b"READY=1"
        assert read_subnet_file(str(node.subnet_file)) is not None  # written before READY=1
        assert node.stop() == 0
    finally:
        sock.close()


def test_subnet_file_written_again_when_it_disappears(agents, etcd_server, etcd_prefix):
    store = etcdstore.connect(etcd_server.url, api="v3")
    store.put(etcd_prefix + "/config", BIG)
    store.close()
    node = agents("sf", etcd_server.url, "v3", etcd_prefix, "127.0.0.191")
    node.wait_subnet()
    node.wait_log("running with lease")
    text = node.subnet_file.read_text()
    node.subnet_file.unlink()  # a cleaned /run, an operator's rm
    node.wait_log("had disappeared: wrote it again", 15)  # checked every tick (5 s)
    assert node.subnet_file.read_text() == text
    assert oct(node.subnet_file.stat().st_mode & 0o777) == oct(0o644)
    time.sleep(6)  # another tick: the file is there, nothing more is said
    lines = [line for line in node.log().splitlines() if "had disappeared" in line]
    assert len(lines) == 1 and lines[0].startswith("W") and str(node.subnet_file) in lines[0], node.log()
    assert node.stop() == 0
