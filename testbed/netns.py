"""A multi-host test bed built from network namespaces.

Layout (every name carries a random suffix, so concurrent runs never collide)::

    pfl-sw-<sfx>   switch namespace: bridges brA, brB, brC (three L2 segments)
    pfl-rt-<sfx>   router: 172.30.1.254 on A, 172.30.2.254 on B, forwards between them
    pfl-et-<sfx>   etcd: 172.30.1.2 on A (default route via the router)
    pfl-hN-<sfx>   host N: eth0 on segment A (172.30.1.1N) or B (172.30.2.1N), default route via the
                   router; optional eth1 on segment C (172.30.3.1N, no router: one L2 segment);
                   an empty bridge ``docker0`` (the docker stand-in; gets FLANNEL_SUBNET's first address)

``TestBed(..., ipv6=True)`` gives every host/router segment address an IPv6 twin (``nodad``, /64):
fd00:30:1::1N for 172.30.1.1N (``Host.address6``; ``Host.address6_2`` on eth1), the router fd00:30:N::fe
with IPv6 forwarding, and IPv6 default routes via it.  etcd stays IPv4-only.

The test bed itself uses iproute2 (``ip``) to build the namespaces — it is scaffolding, and checking
the agents' netlink work with an independent tool is a feature.  Everything is torn down by
``destroy()``, which is safe to call after any failure and more than once (it also deletes the
bed's log directory unless ``PFL_KEEP_LOGS=1`` is set).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Tuple

SEGMENTS = {"A": "172.30.1", "B": "172.30.2", "C": "172.30.3"}
ROUTER_ID = 254
# the IPv6 twins (TestBed(ipv6=True)): segment prefix fd00:30:N::/64, host N at ::1N, router at ::fe
SEGMENTS6 = {"A": "fd00:30:1", "B": "fd00:30:2", "C": "fd00:30:3"}
ROUTER_ID6 = "fe"


def sh(*cmd: str, check: bool = True, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc


class Host:
    def __init__(self, bed: TestBed, n: int, segment: str, second: Optional[str]) -> None:
        self.bed = bed
        self.n = n
        self.ns = "pfl-h%d-%s" % (n, bed.sfx)
        self.segment = segment
        self.address = "%s.%d" % (SEGMENTS[segment], 10 + n)
        self.second = second
        self.address2 = "%s.%d" % (SEGMENTS[second], 10 + n) if second else None
        # IPv6 twins of address/address2 (None unless TestBed(ipv6=True))
        self.address6: Optional[str] = "%s::1%d" % (SEGMENTS6[segment], n) if bed.ipv6 else None
        self.address6_2: Optional[str] = ("%s::1%d" % (SEGMENTS6[second], n)
                                          if bed.ipv6 and second else None)
        self.procs: List[subprocess.Popen] = []
        self.dir = os.path.join(bed.dir, "h%d" % n)
        os.makedirs(self.dir, exist_ok=True)

    # -- commands inside the namespace -----------------------------------------------------------
    def cmd(self, *args: str) -> List[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*args), check=check, timeout=timeout)

    def popen(self, *args: str, log: Optional[str] = None, env: Optional[Dict[str, str]] = None,
              **kwargs: Any) -> subprocess.Popen:
        out = open(log or os.devnull, "ab")
        full_env = dict(os.environ, **(env or {}))
        proc = subprocess.Popen(self.cmd(*args), stdout=kwargs.pop("stdout", out), stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True, **kwargs)
        out.close()
        self.procs.append(proc)
        return proc

    def ip_json(self, *args: str) -> Any:
        out = self.run("ip", "-j", *args).stdout.strip()
        return json.loads(out) if out else []

    def routes(self) -> List[Dict[str, Any]]:
        return self.ip_json("-4", "route", "show")

    def routes6(self) -> List[Dict[str, Any]]:
        return self.ip_json("-6", "route", "show")

    def link(self, name: str) -> Optional[Dict[str, Any]]:
        proc = sh(*self.cmd("ip", "-j", "-d", "link", "show", "dev", name), check=False)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        return data[0] if data else None

    def links(self) -> List[str]:
        return [link["ifname"] for link in self.ip_json("link", "show")]

    def ping(self, target: str, source: Optional[str] = None, count: int = 3, interval: float = 0.2,
             deadline: int = 10) -> subprocess.CompletedProcess:
        """ping ``target`` (``ping -6`` for an IPv6 target) from ``source`` if given."""
        args = ["ping", "-n", "-c", str(count), "-i", str(interval), "-w", str(deadline)]
        if ":" in target:
            args.insert(1, "-6")
        if source:
            args += ["-I", source]
        return self.run(*args, target, check=False, timeout=deadline + 10)

    def ping6(self, target: str, source: Optional[str] = None, count: int = 3, interval: float = 0.2,
              deadline: int = 10) -> subprocess.CompletedProcess:
        """``ping -6``: ``ping`` for an IPv6 target."""
        return self.ping(target, source=source, count=count, interval=interval, deadline=deadline)

    def set_bridge_address(self, address: str, address6: Optional[str] = None) -> None:
        """Give the docker stand-in bridge FLANNEL_SUBNET's first address (e.g. ``10.100.3.1/24``); an
        IPv6 ``address`` (e.g. ``fd10::1/64``) replaces only the bridge's global IPv6 addresses (an IPv4
        one only the IPv4 ones); ``address6`` sets the IPv6 one too.  An address already there stays (a
        backend restart sets the same one again while traffic flows to it); a new one is added before
        the old ones go."""
        for addr in [address] + ([address6] if address6 else []):
            family = "-6" if ":" in addr else "-4"
            rows = json.loads(self.run("ip", "-j", family, "addr", "show", "dev", "docker0", "scope", "global")
                              .stdout or "[]")
            have = ["%s/%s" % (a["local"], a["prefixlen"]) for row in rows for a in row.get("addr_info", [])
                    if a.get("local")]
            want = str(ipaddress.ip_interface(addr))
            if want not in [str(ipaddress.ip_interface(h)) for h in have]:
                self.run("ip", "addr", "add", addr, "dev", "docker0", *(["nodad"] if family == "-6" else []))
            for old in have:
                if str(ipaddress.ip_interface(old)) != want:
                    self.run("ip", "addr", "del", old, "dev", "docker0")

    def stop_procs(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self.procs = []


class TestBed:
    """``TestBed(["A", "A", "B"], second=[None, "C", "C"])``: three hosts, the third behind the router."""

    __test__ = False  # not a pytest test class

    def __init__(self, segments: List[str], second: Optional[List[Optional[str]]] = None,
                 workdir: Optional[str] = None, ipv6: bool = False) -> None:
        self.ipv6 = ipv6
        self.sfx = secrets.token_hex(3)
        self.dir = workdir or "/tmp/pfl-%s" % self.sfx
        os.makedirs(self.dir, exist_ok=True)
        self.switch = "pfl-sw-%s" % self.sfx
        self.router = "pfl-rt-%s" % self.sfx
        self.etcd_ns = "pfl-et-%s" % self.sfx
        self.etcd_address = "%s.2" % SEGMENTS["A"]
        self.namespaces: List[str] = []
        self.hosts: List[Host] = []
        second = second or [None] * len(segments)
        try:
            self._build(segments, second)
        except BaseException:
            self.destroy()
            raise

    def _netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _plug(self, ns: str, ifname: str, segment: str, address: str, tag: str,
              address6: Optional[str] = None) -> None:
        """A veth from ``ns`` (named ``ifname``) into the switch's bridge for ``segment``."""
        port = "%s-%s" % (tag, self.sfx)
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br" + segment, "up")
        sh("ip", "-n", ns, "addr", "add", address + "/24", "dev", ifname)
        if address6:
            sh("ip", "-n", ns, "addr", "add", address6 + "/64", "dev", ifname, "nodad")
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def _build(self, segments: List[str], second: List[Optional[str]]) -> None:
        self._netns(self.switch)
        for seg in SEGMENTS:
            sh("ip", "-n", self.switch, "link", "add", "br" + seg, "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br" + seg, "up")
        self._netns(self.router)
        self._plug(self.router, "ethA", "A", "%s.%d" % (SEGMENTS["A"], ROUTER_ID), "ra", self._router6("A"))
        self._plug(self.router, "ethB", "B", "%s.%d" % (SEGMENTS["B"], ROUTER_ID), "rb", self._router6("B"))
        sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.ipv6:
            sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self._netns(self.etcd_ns)
        self._plug(self.etcd_ns, "eth0", "A", self.etcd_address, "et")
        sh("ip", "-n", self.etcd_ns, "route", "add", "default", "via", "%s.%d" % (SEGMENTS["A"], ROUTER_ID))
        for i, seg in enumerate(segments, start=1):
            host = Host(self, i, seg, second[i - 1])
            self._netns(host.ns)
            self._plug(host.ns, "eth0", seg, host.address, "h%d" % i, host.address6)
            sh("ip", "-n", host.ns, "route", "add", "default", "via", "%s.%d" % (SEGMENTS[seg], ROUTER_ID))
            if self.ipv6:
                sh("ip", "-n", host.ns, "-6", "route", "add", "default", "via", self._router6(seg))
            if host.second:
                self._plug(host.ns, "eth1", host.second, host.address2, "g%d" % i, host.address6_2)
            sh("ip", "-n", host.ns, "link", "add", "docker0", "type", "bridge")
            sh("ip", "-n", host.ns, "link", "set", "docker0", "up")
            host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            if self.ipv6:
                host.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            self.hosts.append(host)

    def _router6(self, segment: str) -> Optional[str]:
        """The router's IPv6 address on ``segment`` (None without ipv6)."""
        return "%s::%s" % (SEGMENTS6[segment], ROUTER_ID6) if self.ipv6 else None

    def destroy(self) -> None:
        for host in self.hosts:
            try:
                host.stop_procs()
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            # kill anything still running in the namespace (only processes this bed started live there)
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        if not os.environ.get("PFL_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TestBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def private_mount(source: str, target: str) -> List[str]:
    """A command prefix (for ``Agent``/``BackendDriver`` ``wrap=``) running the command in a mount
    namespace of its own with ``source`` bind-mounted on ``target`` (e.g. a per-host /run/wireguard:
    wireguard-go's socket path is the same in every network namespace). The command is exec'd, so
    its pid is the process's; inspect it with ``nsenter -t <pid> -m -n ...``."""
    os.makedirs(source, exist_ok=True)
    script = 'mkdir -p "$1" && mount --bind "$0" "$1" && shift && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, source, target]


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))


def first_address(subnet: str) -> str:
    """``10.1.2.0/24`` -> ``10.1.2.1/24``; ``fd10:0:0:2::/64`` -> ``fd10:0:0:2::1/64``."""
    net = ipaddress.ip_network(subnet)
    return "%s/%d" % (net.network_address + 1, net.prefixlen)


class BackendDriver:
    """One backend run by ``testbed.backend_driver`` inside a host's namespace."""

    def __init__(self, host: Host, env: Optional[Dict[str, str]] = None, wrap: Optional[List[str]] = None) -> None:
        self.host = host
        self.log = os.path.join(host.dir, "driver.log")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        python = os.path.join(repo, ".venv", "bin", "python")
        out = open(self.log, "ab")
        # wrap: a command prefix run inside the namespace before python (e.g. private_mount(...))
        self.proc = subprocess.Popen(host.cmd(*(wrap or []), python, "-m", "testbed.backend_driver"),
                                     cwd=repo,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out, text=True,
                                     env=dict(os.environ, **(env or {})), start_new_session=True)
        out.close()
        host.procs.append(self.proc)

    @classmethod
    def up(cls, host: Host, network: Optional[str], backend: Dict[str, Any], subnet: Optional[str],
           others: List[Dict[str, Any]], env: Optional[Dict[str, str]] = None, wrap: Optional[List[str]] = None,
           subnet6: Optional[str] = None, config: Optional[Dict[str, Any]] = None) -> BackendDriver:
        """A driver whose backend is created on ``eth0``, configured with the lease ``subnet`` (its first
        address on the host's bridge) and synced with ``others``; ``.lease_value`` is its lease JSON.

        IPv6: ``config`` adds keys to the network config (``{"EnableIPv6": True, "IPv6Network": ...}``,
        ``"EnableIPv4": False`` with ``network=None`` and ``subnet=None`` for IPv6-only) and ``subnet6``
        is the lease's IPv6 subnet (its first address goes on the bridge too)."""
        driver = cls(host, env=env, wrap=wrap)
        cfg: Dict[str, Any] = {"Backend": backend}
        if network:
            cfg["Network"] = network
        cfg.update(config or {})
        reply = driver.call("create", config=cfg, iface="eth0", ipv6=bool(subnet6 or cfg.get("EnableIPv6")))
        assert reply["ok"], reply
        driver.lease_value = reply["lease_value"]
        assert driver.call("configure", subnet=subnet, subnet6=subnet6)["ok"]
        if subnet:
            host.set_bridge_address(subnet.replace(".0/24", ".1/24"))
        if subnet6:
            host.set_bridge_address(first_address(subnet6))
        assert driver.call("sync", leases=others)["ok"]
        return driver

    def call(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(dict(op=op, **kwargs)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("backend driver on %s died; log:\n%s" % (self.host.ns, self.logtext()))
        return json.loads(line)

    def logtext(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
            except (AssertionError, BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLANNELD = os.path.join(REPO, ".venv", "bin", "flanneld")


def read_env(path: str) -> Dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                key, value = line.strip().split("=", 1)
                out[key] = value
    return out


class Agent:
    """A real ``flanneld`` (the console script in .venv) running inside a host's namespace."""

    def __init__(self, host: Host, endpoints: str, prefix: str, args: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None, wrap: Optional[List[str]] = None) -> None:
        self.host = host
        self.wrap = list(wrap or [])  # a command prefix run inside the namespace before flanneld
        self.endpoints = endpoints
        self.prefix = prefix
        self.args = list(args or [])
        self.env = env or {}
        self.subnet_file = os.path.join(host.dir, "subnet.env")
        self.log = os.path.join(host.dir, "flanneld.log")
        self.healthz_port = 9900 + host.n
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0
        self.started_at = 0.0

    def start(self, wait: bool = True, timeout: float = 30.0) -> Agent:
        # subnet.env stays (the agent may reuse its subnet from it); readiness = a fresh write
        self.started_at = time.time()
        with open(self.log, "a") as f:
            f.write("==== start %d: %s\n" % (self.starts, " ".join(self.args)))
        self.starts += 1
        self.proc = self.host.popen(
            *self.wrap, FLANNELD, "--etcd-endpoints", self.endpoints, "--etcd-prefix", self.prefix,
            "--subnet-file", self.subnet_file, "--healthz-ip", "127.0.0.1",
            "--healthz-port", str(self.healthz_port), *self.args, log=self.log, env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> Dict[str, str]:
        def ready() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("flanneld on %s exited with %s; log:\n%s"
                                     % (self.host.ns, self.proc.returncode, self.logtext()))
            try:
                fresh = os.stat(self.subnet_file).st_mtime >= self.started_at - 0.01
            except FileNotFoundError:
                return False
            return fresh and read_env(self.subnet_file)

        env = wait_for(ready, timeout, what="subnet.env on %s" % self.host.ns)
        for key in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"):  # docker0's stand-in gets each family's
            if key in env:
                self.host.set_bridge_address(env[key])
        return env

    @property
    def subnet_env(self) -> Dict[str, str]:
        return read_env(self.subnet_file)

    @property
    def subnet(self) -> str:
        return self.subnet_of(4)

    @property
    def bridge_ip(self) -> str:
        return self.bridge(4)

    def subnet_of(self, version: int) -> str:
        """The lease's subnet of one family, from subnet.env."""
        key = "FLANNEL_SUBNET" if version == 4 else "FLANNEL_IPV6_SUBNET"
        return str(ipaddress.ip_interface(self.subnet_env[key]).network)

    def bridge(self, version: int) -> str:
        """The docker0 stand-in's address of one family (the subnet's first address)."""
        key = "FLANNEL_SUBNET" if version == 4 else "FLANNEL_IPV6_SUBNET"
        return self.subnet_env[key].split("/")[0]

    def metrics(self) -> Dict[str, float]:
        out = self.host.run("curl", "-sf", "-m", "3", "http://127.0.0.1:%d/metrics" % self.healthz_port,
                            check=False).stdout
        values = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                name, _sep, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def logtext(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-8000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the agent process alone (not its group): its udp workers must notice and exit."""
        if self.proc is None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None


def etcdctl(bed: TestBed, server: Any, *args: str) -> str:
    """etcdctl (v3 API) run in the etcd namespace; retried a few times (a loaded machine makes etcd slow)."""
    cmd = ["ip", "netns", "exec", bed.etcd_ns, "env", "ETCDCTL_API=3", "etcdctl", "--endpoints", server.url,
           "--dial-timeout", "5s", "--command-timeout", "15s", *args]
    for attempt in range(3):
        try:
            return sh(*cmd, timeout=40).stdout
        except (RuntimeError, subprocess.TimeoutExpired):
            if attempt == 2:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def put_config(bed: TestBed, server: Any, prefix: str, config: Dict[str, Any]) -> None:
    etcdctl(bed, server, "put", prefix + "/config", json.dumps(config))


def wait_peers(agents: List[Agent], timeout: float = 20.0) -> None:
    """Wait until every agent has handed all the other agents' leases to its datapath: an agent is
    ready once its own lease is written, and its peers' leases arrive through the watch just after."""
    def known() -> bool:
        return all(a.metrics().get("flannel_remote_leases", -1) >= len(agents) - 1 for a in agents)

    wait_for(known, timeout, what="every agent knowing its %d peers' leases" % (len(agents) - 1))


def ping_pairs(pairs: List[Tuple[Host, str, str]], count: int = 3, deadline: int = 10) -> Dict[str, str]:
    """``(host, source, target)`` pings in parallel (each at most ``deadline`` seconds, either family);
    returns {"ns src->dst": output} of those that lost packets."""
    procs = []
    for host, src, dst in pairs:
        fam = "-6" if ":" in dst else "-4"
        cmd = host.cmd("ping", fam, "-n", "-c", str(count), "-i", "0.2", "-w", str(deadline), "-I", src, dst)
        procs.append(("%s %s->%s" % (host.ns, src, dst),
                      subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    failed = {}
    for name, proc in procs:
        out, _err = proc.communicate(timeout=deadline + 20)
        if proc.returncode != 0:
            failed[name] = out
    return failed


def ping_all(agents: List[Agent], count: int = 3, deadline: int = 10, wait: bool = True,
             versions: Tuple[int, ...] = (4,)) -> Dict[str, str]:
    """Every agent's host pings every other host's bridge address from its own bridge address, in each
    of ``versions`` and in parallel, once each agent knows the others' leases (``wait``); returns the
    pairs that lost packets (see :func:`ping_pairs`)."""
    if wait:
        wait_peers(agents)
    pairs = [(a.host, a.bridge(version), b.bridge(version)) for a in agents for b in agents if a is not b
             for version in versions]
    return ping_pairs(pairs, count, deadline)


LEASE_WRITER = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, %(repo)r)
from pyflannel import etcdstore
store = etcdstore.connect([%(url)r], api="v3")
pairs = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
def put(pair):
    store.put(pair[0], json.dumps({"PublicIP": pair[1], "BackendType": "host-gw"}))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, pairs))
"""


def hostgw_leases(count: int, on_link: bool) -> List[Tuple[str, str]]:
    """``count`` (subnet, next hop) pairs: subnets 10.<i>.0/24 from 10.1.0.0; next hops in
    192.168.0.0/18 (on-link once the host has that prefix) or in 198.18.0.0/15 (never on-link)."""
    out = []
    for i in range(count):
        n = 256 + i  # skip 10.0.x.0
        subnet = "10.%d.%d.0/24" % (n // 256, n % 256)
        h = 2 + i
        hop = ("192.168.%d.%d" if on_link else "198.18.%d.%d") % (h // 256, h % 256)
        out.append((subnet, hop))
    return out


def write_leases(bed: TestBed, server: Any, prefix: str, pairs: List[Tuple[str, str]]) -> None:
    """host-gw leases (subnet, PublicIP) written through the project's etcd facade (v3), run inside the
    etcd namespace."""
    lines = "".join("%s/subnets/%s %s\n" % (prefix, s.replace("/", "-"), h) for s, h in pairs)
    python = os.path.join(REPO, ".venv", "bin", "python")
    subprocess.run(["ip", "netns", "exec", bed.etcd_ns, python, "-c", LEASE_WRITER % {"repo": REPO, "url": server.url}],
                   input=lines, text=True, check=True, timeout=300)
