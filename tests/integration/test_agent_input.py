"""Bad input and outages read like one sentence each: real ``flanneld`` against a real etcd.

(a) bad --etcd-endpoints: exit 2 naming the flag and the value; (b) a subnet file that cannot be
written (no directory, a full disk): exit 1 naming --subnet-file before any lease exists; (c) an etcd
outage: one line when it begins, one when it ends, no client-library retry text; (d) the network config
changed at runtime: one line per change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from pyflannel import etcdstore
from testbed.etcdserver import EtcdServer
from tests.integration.test_agent import BIG, FLANNELD

LIBRARY_TEXT = re.compile(r"urllib3|Retrying|Connection pool|HTTPConnectionPool|Max retries|Traceback")


@pytest.mark.parametrize("value", ["not-a-url", "http://[::1", "http://127.0.0.1:99999", "ftp://127.0.0.1:2379"])
def test_bad_endpoints_exit_2(value):
    res = subprocess.run([FLANNELD, "--etcd-endpoints", value], capture_output=True, text=True, timeout=20,
                         check=False)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--etcd-endpoints" in lines[0] and value in lines[0], res.stderr
    assert "internal error" not in res.stderr


def test_unwritable_subnet_file_exit_1_before_a_lease(agents, tmp_path, etcd_server, etcd_prefix):
    store = etcdstore.connect(etcd_server.url, api="v3")
    store.put(etcd_prefix + "/config", BIG)
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    bad = str(blocker / "run" / "subnet.env")
    agent = agents("n1", etcd_server.url, "v3", etcd_prefix, "127.0.0.111")
    agent.args[agent.args.index("--subnet-file") + 1] = bad
    agent.kill()
    agent.start()
    assert agent.wait_exit(15) == 1
    errors = [line for line in agent.log().splitlines() if line.startswith("E")]
    assert len(errors) == 1 and "--subnet-file" in errors[0] and bad in errors[0], agent.log()
    assert "not a directory" in errors[0]
    leases, _revision = store.list(etcd_prefix + "/subnets/")
    assert leases == []
    store.close()


@pytest.fixture(scope="module")
def own_etcd():
    """An etcd of this module only: the outage test stops and starts it."""
    server = EtcdServer().start()
    yield server
    server.destroy()


def _count(log, pattern):
    return len(re.findall(pattern, log))


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_outage_two_lines(agents, own_etcd, api):
    prefix = "/outage-%s/coreos.com/network" % api
    store = etcdstore.connect(own_etcd.url, api=api)
    store.put(prefix + "/config", BIG)
    store.close()
    agent = agents("n-" + api, own_etcd.url, api, prefix, "127.0.0.121")
    agent.wait_subnet(20)
    own_etcd.stop()
    agent.wait_log("etcd outage began", 20)
    time.sleep(8)
    own_etcd.start()
    agent.wait_log("etcd outage ended", 30)
    time.sleep(2)
    log = agent.log()
    assert agent.proc.poll() is None, log
    assert _count(log, "etcd outage began") == 1, log
    assert _count(log, r"etcd outage ended: etcd is reachable again at http://\S+; the outage lasted \d+ s") == 1, log
    assert not LIBRARY_TEXT.search(log), log
    assert len([line for line in log.splitlines() if line.startswith("E")]) == 1, log


def test_config_changed_at_runtime(agents, etcd_server, etcd_prefix):
    store = etcdstore.connect(etcd_server.url, api="v3")
    store.put(etcd_prefix + "/config", BIG)
    agent = agents("n-cfg", etcd_server.url, "v3", etcd_prefix, "127.0.0.131",
                   env={"PYFLANNEL_CONFIG_POLL": "1"})
    agent.wait_subnet(20)
    store.put(etcd_prefix + "/config", '{"Network": ')
    agent.wait_log("is not valid", 15)
    time.sleep(3)
    assert _count(agent.log(), "is not valid") == 1, agent.log()
    other = json.loads(BIG)
    other["Network"] = "10.200.0.0/16"
    store.put(etcd_prefix + "/config", json.dumps(other))
    agent.wait_log("10.200.0.0/16", 15)
    time.sleep(3)
    log = agent.log()
    changed = [line for line in log.splitlines() if "10.200.0.0/16" in line]
    assert len(changed) == 1 and "10.100.0.0/16" in changed[0] and "restart" in changed[0], log
    assert agent.proc.poll() is None
    store.close()


def test_full_disk_subnet_file_exit_1_before_a_lease(agents, tmp_path, etcd_server, etcd_prefix):
    """A subnet file on a full file system (a tiny tmpfs, filled): creating a file there still works,
    writing its bytes does not; the check at start writes real bytes, so the agent stops in one line
    naming the file before it takes a lease."""
    store = etcdstore.connect(etcd_server.url, api="v3")
    store.put(etcd_prefix + "/config", BIG)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True, timeout=20)
    try:
        with open(full / "filler", "wb", buffering=0) as filler:
            for _block in range(64):  # 64 KiB at most: the file system's size
                try:
                    filler.write(b"\0" * 4096)
                except OSError:
                    break
        with pytest.raises(OSError), open(full / "one-more", "wb", buffering=0) as extra:  # full indeed
            extra.write(b"\0" * 4096)
        (full / "one-more").unlink()
        path = str(full / "subnet.env")
        agent = agents("n-full", etcd_server.url, "v3", etcd_prefix, "127.0.0.112")
        agent.args[agent.args.index("--subnet-file") + 1] = path
        agent.kill()
        agent.start()
        assert agent.wait_exit(15) == 1
        log = agent.log()
        errors = [line for line in log.splitlines() if line.startswith("E")]
        assert len(errors) == 1 and path in errors[0] and "No space left on device" in errors[0], log
        assert "Traceback" not in log and "acquired" not in log, log
        leases, _revision = store.list(etcd_prefix + "/subnets/")
        assert leases == []
        assert sorted(os.listdir(full)) == ["filler"]  # the probe left nothing behind
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False, timeout=20)
        store.close()
