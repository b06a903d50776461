"""The local multi-host lab: systemd containers on one docker network, site.yml run on them.

    lab.py up [--backend BACKEND] [--etcd-members 1|3] [--hosts 3] [--ipv6]
    lab.py status
    lab.py down

BACKEND is any datapath backend of the catalogue (vxlan by default).
``up`` makes sure a docker engine answers (lab/ensure-docker.sh), builds or reuses the images
(lab/build-images.sh), starts the hosts with the run flags this kind of machine accepts (no
--privileged), writes lab/inventory/hosts.yml, runs ``ansible-playbook -i lab/inventory site.yml``,
loads the busybox image into every host's inner docker, starts one workload container per host and
shows the status: ``playbooks/status.yml`` against the lab's inventory (the same view real hosts get:
services, leases, docker0 against subnet.env, a ping matrix between the hosts' flannel addresses), then
the lab's own proof, a ping matrix between the workload containers on different hosts. ``status`` shows
the same again.
``--ipv6`` (``make lab IPV6=1``) makes it dual stack: the lab network gets an IPv6 subnet (LAB_SUBNET6,
beside LAB_SUBNET for IPv4), so every host has an IPv6 address too; the inventory turns on
flannel_enable_ipv6 with the IPv6 overlay LAB_FLANNEL_IPV6 (the backend must carry IPv6: the catalogue
says which do), and both ping matrices show IPv4 and IPv6.
Everything the lab creates carries the docker label ``netfabric.flannel.lab``; ``down`` removes
exactly that (containers, the network, the volumes).

Traffic: both ping matrices only target the lab's own hosts and containers: status.yml 1 echo request
per pair (2 s timeout), the container matrix 2 echo requests per pair (2 s timeout).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

LAB_DIR = Path(__file__).resolve().parent
ROOT = LAB_DIR.parent
VENV_BIN = ROOT / ".venv" / "bin"
INVENTORY_DIR = LAB_DIR / "inventory"
# LAB_LABEL, LAB_PREFIX, LAB_NETWORK and LAB_SUBNET(6) apart, two labs (from two checkouts) live side by side.
LABEL = os.environ.get("LAB_LABEL", "netfabric.flannel.lab")
NETWORK = os.environ.get("LAB_NETWORK", "netfabric-lab")
PREFIX = os.environ.get("LAB_PREFIX", "lab-node")
HOST_IMAGE = os.environ.get("LAB_IMAGE", "netfabric-flannel-lab") + ":latest"
BUSYBOX_IMAGE = os.environ.get("LAB_BUSYBOX", "netfabric-flannel-busybox") + ":latest"
WORKLOAD = "lab-bb"
# Dual stack (--ipv6): the lab network's subnets and the flannel IPv6 overlay.
SUBNET4 = os.environ.get("LAB_SUBNET", "172.30.240.0/24")
SUBNET6 = os.environ.get("LAB_SUBNET6", "fd00:4c41:42::/64")
FLANNEL_IPV6 = os.environ.get("LAB_FLANNEL_IPV6", "fd00:100::/56")
# IPv6 on (docker0 inherits the default's disable_ipv6) and forwarding (the host routes between docker0 and
# flannel's devices), set at docker run; systempaths=unconfined leaves /proc/sys writable, which the docker
# engine inside needs to switch IPv6 on for its containers' interfaces.
IPV6_RUN_FLAGS = ["--security-opt", "systempaths=unconfined"] + [
    f for key in ("all.disable_ipv6=0", "default.disable_ipv6=0", "all.forwarding=1", "default.forwarding=1")
    for f in ("--sysctl", "net.ipv6.conf." + key)]


def lab_backends(family: int = 4) -> tuple:
    """The backends a lab runs (with ``family`` 6: those that carry IPv6), from the catalogue of the installed
    pyflannel (make lab runs the venv's Python); vxlan, the default, first. Imported here, not at the top:
    `lab.py down` runs under any python3."""
    from pyflannel.catalogue import BY_NAME, DATAPATHS

    names = [b for b in DATAPATHS if family in BY_NAME[b].families]
    return tuple(sorted(names, key=lambda b: b != "vxlan"))


def __getattr__(name: str):
    if name == "BACKENDS":  # lab.BACKENDS, for the tests
        return lab_backends()
    raise AttributeError(name)


# Every capability but SYS_RESOURCE: --privileged fails on some VMs (the capability bounding set lacks it).
RUN_FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--device", "/dev/net/tun", "--stop-signal", "SIGRTMIN+3",
    "--sysctl", "net.ipv4.ip_forward=1",
]


class StepFailed(Exception):
    """A lab step failed; the message says which step and why."""


# ------------------------------------------------------------------------------------ helpers
def say(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = True, input_bytes: Optional[bytes] = None,
        timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), input=input_bytes, capture_output=capture, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise StepFailed("%s exited %d: %s" % (" ".join(cmd[:4]), proc.returncode, err[-1] if err else "(no output)"))
    return proc


def out(cmd: Sequence[str], **kw) -> str:
    return run(cmd, **kw).stdout.decode(errors="replace").strip()


def docker(*args: str, **kw) -> str:
    return out(["docker", *args], **kw)


def dexec(host: str, *args: str, check: bool = True, timeout: Optional[float] = 60) -> str:
    return out(["docker", "exec", host, *args], check=check, timeout=timeout)


class Steps:
    """Numbered progress lines; a failure names its step."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0

    def __call__(self, title: str, fn, *args):
        self.n += 1
        t0 = time.monotonic()
        say("==> [%d/%d] %s" % (self.n, self.total, title))
        try:
            result = fn(*args)
        except StepFailed as err:
            raise StepFailed("step %d/%d '%s' failed: %s" % (self.n, self.total, title, err)) from None
        except subprocess.TimeoutExpired as err:
            what = " ".join(err.cmd[:5])
            raise StepFailed("step %d/%d '%s' timed out: %s" % (self.n, self.total, title, what)) from None
        say("    done in %.0fs" % (time.monotonic() - t0))
        return result


def lab_containers() -> List[str]:
    names = docker("ps", "-a", "--filter", "label=" + LABEL, "--format", "{{.Names}}")
    return sorted(n for n in names.splitlines() if n)


def container_ip(name: str) -> str:
    return docker("inspect", "-f", '{{(index .NetworkSettings.Networks "%s").IPAddress}}' % NETWORK, name)


def container_ip6(name: str) -> str:
    return docker("inspect", "-f", '{{(index .NetworkSettings.Networks "%s").GlobalIPv6Address}}' % NETWORK, name)


def label_of(name: str, key: str) -> str:
    return docker("inspect", "-f", '{{index .Config.Labels "%s"}}' % key, name)


# ------------------------------------------------------------------------------------ up
def ensure_engine() -> None:
    if run([str(LAB_DIR / "ensure-docker.sh")], capture=False, check=False).returncode != 0:
        raise StepFailed("no docker engine (see the lab: ERROR line above)")


def build_images() -> None:
    if run([str(LAB_DIR / "build-images.sh"), "all"], capture=False, check=False).returncode != 0:
        raise StepFailed("image build failed (see the lab: ERROR line above)")


def host_names(count: int) -> List[str]:
    return ["%s%d" % (PREFIX, i) for i in range(1, count + 1)]


def start_hosts(names: List[str], backend: str, members: int, ipv6: bool = False) -> None:
    existing = lab_containers()
    wanted = "%s/%d/%d%s" % (backend, members, len(names), "/ipv6" if ipv6 else "")
    if existing:
        current = label_of(existing[0], LABEL + ".config")
        if current != wanted or sorted(existing) != sorted(names):
            say("    the running lab was made with %s (backend/etcd members/hosts), now %s: recreating it"
                % (current or "?", wanted))
            down(quiet=True)
            existing = []
    net = docker("network", "ls", "-q", "--filter", "name=^%s$" % NETWORK)
    if net and docker("network", "inspect", "-f", "{{.EnableIPv6}}", NETWORK) != ("true" if ipv6 else "false"):
        if existing:
            down(quiet=True)
            existing = []
        else:
            docker("network", "rm", NETWORK)
        net = ""
    if not net:
        if ipv6:
            docker("network", "create", "--label", LABEL, "--ipv6", "--subnet", SUBNET6, "--subnet", SUBNET4, NETWORK)
            say("    network %s created (%s, %s)" % (NETWORK, SUBNET4, SUBNET6))
        else:
            docker("network", "create", "--label", LABEL, NETWORK)
            say("    network %s created" % NETWORK)
    for name in names:
        if name in existing:
            if docker("inspect", "-f", "{{.State.Running}}", name) != "true":
                docker("start", name)
            say("    %s reused" % name)
            continue
        docker("volume", "create", "--label", LABEL, name + "-docker")
        docker("run", "-d", "--name", name, "--hostname", name, "--network", NETWORK,
               "--label", LABEL, "--label", "%s.config=%s" % (LABEL, wanted),
               *RUN_FLAGS, *(IPV6_RUN_FLAGS if ipv6 else []), "-v", "%s-docker:/var/lib/docker" % name, HOST_IMAGE)
        say("    %s started (%s)" % (name, container_ip(name) + (", " + container_ip6(name) if ipv6 else "")))
    for name in names:
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state = dexec(name, "systemctl", "is-system-running", check=False, timeout=20)
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        else:
            raise StepFailed("%s: systemd did not finish booting in 90s (state %r); see docker logs %s"
                             % (name, state, name))
        if state == "degraded":
            failed = dexec(name, "systemctl", "--failed", "--no-legend", "--plain", check=False)
            say("    %s: systemd degraded: %s" % (name, failed.replace("\n", "; ")))


def write_inventory(names: List[str], backend: str, members: int, ipv6: bool = False) -> Path:
    INVENTORY_DIR.mkdir(exist_ok=True)
    path = INVENTORY_DIR / "hosts.yml"
    lines = [
        "# Written by lab/lab.py for the local lab; `make lab-down` removes it.",
        "# Groups: etcd (etcd members), flannel_nodes (agent + docker). lab_hosts only carries the",
        "# connection settings, so that localhost (certificates, run_once tasks) stays local.",
        "all:",
        "  vars:",
        "    flannel_backend: {type: %s}" % backend,
        "    flannel_iface: [eth0]",
        "    flannel_wheelhouse_dir: %s" % (LAB_DIR / ".cache" / "wheelhouse"),
        *(["    flannel_enable_ipv6: true", "    flannel_ipv6_network: %s" % FLANNEL_IPV6] if ipv6 else []),
        "  children:",
        "    lab_hosts:",
        "      vars:",
        "        ansible_connection: community.docker.docker",
        "        ansible_python_interpreter: /usr/bin/python3",
        "      hosts:",
    ]
    for n in names:
        lines.append("        %s:" % n)
        lines.append("          flannel_public_ip: %s" % container_ip(n))
        if ipv6:
            lines.append("          flannel_public_ipv6: %s" % container_ip6(n))
    lines += ["    etcd:", "      hosts:"]
    lines += ["        %s:" % n for n in names[:members]]
    lines += ["    flannel_nodes:", "      hosts:"]
    lines += ["        %s:" % n for n in names]
    path.write_text("\n".join(lines) + "\n")
    say("    wrote %s (etcd: %s; flannel_nodes: %s)" % (path.relative_to(ROOT), ", ".join(names[:members]),
                                                        ", ".join(names)))
    return path


def collections_dir() -> Path:
    """build/collections-link: the checkout as collection netfabric.flannel (as `make collections-link`)."""
    base = ROOT / "build" / "collections-link"
    link = base / "ansible_collections" / "netfabric" / "flannel"
    if not (link.is_symlink() and link.resolve() == ROOT):
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT)
    return base


def playbook(name: str, extra: Sequence[str] = (), profile: bool = False) -> int:
    """ansible-playbook -i lab/inventory <name> from the repository root; its exit code."""
    binary = VENV_BIN / "ansible-playbook"
    if not binary.exists():
        raise StepFailed("%s missing; run `make venv`" % binary)
    env = dict(os.environ, ANSIBLE_FORCE_COLOR=os.environ.get("ANSIBLE_FORCE_COLOR", "1"),
               ANSIBLE_COLLECTIONS_PATH=str(collections_dir()),
               PATH="%s:%s" % (VENV_BIN, os.environ.get("PATH", "")))
    if profile:
        env.setdefault("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
    cmd = [str(binary), "-i", str(INVENTORY_DIR.relative_to(ROOT)), name, *extra]
    say("    " + " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def run_site(extra: List[str]) -> None:
    rc = playbook("site.yml", extra, profile=True)
    if rc != 0:
        raise StepFailed("ansible-playbook exited %d (the failing task is shown above)" % rc)


def start_workloads(names: List[str]) -> None:
    image = subprocess.Popen(["docker", "save", BUSYBOX_IMAGE], stdout=subprocess.PIPE)
    blob = image.communicate()[0]
    if image.returncode != 0:
        raise StepFailed("docker save %s failed; run lab/build-images.sh" % BUSYBOX_IMAGE)
    for name in names:
        run(["docker", "exec", "-i", name, "docker", "load"], input_bytes=blob, timeout=120)
        running = dexec(name, "docker", "ps", "-q", "--filter", "name=^%s$" % WORKLOAD)
        if not running:
            dexec(name, "docker", "rm", "-f", WORKLOAD, check=False)
            dexec(name, "docker", "run", "-d", "--name", WORKLOAD, "--restart", "unless-stopped",
                  BUSYBOX_IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        ip6 = workload_ip(name, 6)
        say("    %s: %s runs at %s%s" % (name, WORKLOAD, workload_ip(name), (", " + ip6) if ip6 else ""))


def workload_ip(host: str, family: int = 4) -> str:
    """The workload container's address (IPv4, or its global IPv6 one) on the host's docker0, "" when none."""
    field = "IPAddress" if family == 4 else "GlobalIPv6Address"
    proc = run(["docker", "exec", host, "docker", "inspect", "-f", "{{.NetworkSettings.%s}}" % field, WORKLOAD],
               check=False, timeout=30)
    text = proc.stdout.decode(errors="replace").strip()
    try:
        return str(ipaddress.ip_address(text)) if proc.returncode == 0 and text else ""
    except ValueError:
        return ""


# ------------------------------------------------------------------------------------ status
def table(header: Sequence[str], rows: List[Sequence[str]], indent: str = "  ") -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = indent + "  ".join("%%-%ds" % w for w in widths)
    say(fmt % tuple(header))
    for r in rows:
        say(fmt % tuple(str(x) for x in r))


def ping(src_host: str, dst_ip: str) -> str:
    proc = run(["docker", "exec", src_host, "docker", "exec", WORKLOAD, "ping", "-c", "2", "-W", "2", dst_ip],
               check=False, timeout=20)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode == 0:
        for line in text.splitlines():
            if "min/avg/max" in line:
                return "ok %sms" % line.split("=")[1].split("/")[1].strip()
        return "ok"
    return "FAIL"


def container_matrix(names: List[str]) -> bool:
    """The lab's proof: the workload container on each host pings the one on every other host (both
    families when the containers have IPv6 addresses: one cell reads "IPv4 result / IPv6 result")."""
    targets = [(n, workload_ip(n), workload_ip(n, 6)) for n in names]
    dual = any(ip6 for _n, _ip, ip6 in targets)
    say("")
    say("CONTAINER PING MATRIX (container %s on each host -> container on each other host, through flannel%s)"
        % (WORKLOAD, "; IPv4 / IPv6" if dual else ""))
    names = ["%s %s" % (n, " ".join(x for x in (ip, ip6) if x) or "(none)") for n, ip, ip6 in targets]
    header = ["from \\ to", *names]
    rows = []
    all_ok = True
    for src, src_ip, src_ip6 in targets:
        row = [src]
        for dst, dst_ip, dst_ip6 in targets:
            if dst == src:
                row.append("-")
                continue
            cells = []
            for have, want in ((src_ip, dst_ip), (src_ip6, dst_ip6)) if dual else ((src_ip, dst_ip),):
                if not have or not want:
                    cells.append("no container")
                    all_ok = False
                else:
                    result = ping(src, want)
                    all_ok &= result.startswith("ok")
                    cells.append(result)
            row.append(" / ".join(cells))
        rows.append(row)
    table(header, rows)
    return all_ok


def status(names: Optional[List[str]] = None) -> bool:
    """status.yml against the lab's inventory (the view real hosts get), then the container matrix."""
    names = names or list(lab_containers())
    if not names or not (INVENTORY_DIR / "hosts.yml").exists():
        say("no lab is running (make lab starts one)")
        return False
    rc = playbook("playbooks/status.yml")
    matrix_ok = container_matrix(names)
    say("")
    if rc == 0 and matrix_ok:
        say("lab: all containers reach each other across hosts")
    else:
        say("lab: PROBLEMS: %s" % "; ".join(
            ([] if rc == 0 else ["status.yml exited %d (its last task lists what is wrong)" % rc])
            + ([] if matrix_ok else ["containers do not all reach each other (FAIL / no container above)"])))
    return rc == 0 and matrix_ok


# ------------------------------------------------------------------------------------ down
def down(quiet: bool = False) -> None:
    names = lab_containers()
    if names:
        docker("rm", "-f", "-v", *names)
    nets = docker("network", "ls", "-q", "--filter", "label=" + LABEL).split()
    if nets:
        docker("network", "rm", *nets)
    vols = docker("volume", "ls", "-q", "--filter", "label=" + LABEL).split()
    if vols:
        docker("volume", "rm", *vols)
    inv = INVENTORY_DIR / "hosts.yml"
    if inv.exists():
        inv.unlink()
    if not quiet:
        say("lab: removed %d containers, %d networks, %d volumes" % (len(names), len(nets), len(vols)))


# ------------------------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up_p = sub.add_parser("up", help="start (or reuse) the lab and run site.yml on it")
    up_p.add_argument("--backend", default=os.environ.get("BACKEND") or "vxlan")
    up_p.add_argument("--etcd-members", type=int, default=int(os.environ.get("ETCD_MEMBERS") or 1))
    up_p.add_argument("--hosts", type=int, default=int(os.environ.get("LAB_HOSTS") or 3))
    up_p.add_argument("--ipv6", action="store_true",
                      help="dual stack: IPv6 on the lab network and in the flannel network (not with udp)")
    up_p.add_argument("ansible_args", nargs="*", help="extra ansible-playbook arguments (after --)")
    sub.add_parser("status", help="playbooks/status.yml on the lab, then the container ping matrix")
    sub.add_parser("down", help="remove the lab's containers, network and volumes")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "down":
            if run(["docker", "info"], check=False).returncode != 0:
                say("lab: no docker engine answers; nothing to remove")
                return 0
            down()
            return 0
        if args.cmd == "status":
            return 0 if status() else 1
        if args.backend not in lab_backends():
            raise StepFailed("BACKEND=%s is not one of %s" % (args.backend, ", ".join(lab_backends())))
        if args.hosts < 1 or not 1 <= args.etcd_members <= args.hosts:
            raise StepFailed("ETCD_MEMBERS=%d must be between 1 and the number of hosts (%d)"
                             % (args.etcd_members, args.hosts))
        if args.ipv6 and args.backend not in lab_backends(6):
            raise StepFailed("IPV6=1 needs a backend that carries IPv6 (%s), not %s"
                             % (", ".join(lab_backends(6)), args.backend))
        names = host_names(args.hosts)
        t0 = time.monotonic()
        step = Steps(7)
        step("docker engine", ensure_engine)
        step("images (%s, %s)" % (HOST_IMAGE, BUSYBOX_IMAGE), build_images)
        step("hosts %s on network %s%s" % (", ".join(names), NETWORK, " (dual stack)" if args.ipv6 else ""),
             start_hosts, names, args.backend, args.etcd_members, args.ipv6)
        step("inventory", write_inventory, names, args.backend, args.etcd_members, args.ipv6)
        step("ansible-playbook site.yml (backend %s%s)" % (args.backend, ", IPv4+IPv6" if args.ipv6 else ""),
             run_site, args.ansible_args)
        step("busybox workload on every host", start_workloads, names)
        ok = step("status", status, names)
        say("lab: up in %.0fs; `make lab-status` shows this again, `make lab-down` removes it"
            % (time.monotonic() - t0))
        return 0 if ok else 1
    except StepFailed as err:
        print("lab: ERROR: %s" % err, file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
