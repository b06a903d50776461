"""A real etcd (Debian etcd-server) for tests: started on a free port, optionally inside a network
namespace, with its own data directory; can be stopped and started again with the same data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import List, Optional

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, host: str = "127.0.0.1", port: Optional[int] = None, netns: Optional[str] = None,
                 enable_v2: bool = True, extra_args: Optional[List[str]] = None) -> None:
        self.host = host
        self.netns = netns
        self.port = port or free_port("127.0.0.1" if netns else host)
        self.peer_port = free_port("127.0.0.1" if netns else host)
        self.enable_v2 = enable_v2
        self.extra_args = extra_args or []
        self.data_dir = tempfile.mkdtemp(prefix="etcd-test-")
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    def _cmd(self) -> List[str]:
        peer = "http://%s:%d" % (self.host, self.peer_port)
        cmd = [
            ETCD_BIN, "--name", "test", "--data-dir", os.path.join(self.data_dir, "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "test=" + peer,
            "--enable-v2=%s" % ("true" if self.enable_v2 else "false"),
            *self.extra_args,
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, timeout: float = 15.0) -> EtcdServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited early; log:\n" + self.log())
            if self.healthy():
                return self
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy in %.0fs; log:\n%s" % (timeout, self.log()))

    def healthy(self) -> bool:
        try:
            cmd = ["curl", "-sf", "-m", "1", self.url + "/health"]
            if self.netns:
                # the root namespace may not reach a namespace address; ask from inside
                cmd = ["ip", "netns", "exec", self.netns, *cmd]
                return subprocess.run(cmd, capture_output=True, timeout=3, check=False).returncode == 0
            with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                return resp.status == 200
        except Exception:
            return False

    def stop(self) -> None:
        """Stop etcd (SIGTERM), keeping its data so start() brings the same cluster back."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
