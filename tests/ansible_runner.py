"""Run the collection's modules for real: ansible-playbook against localhost, the collection found
through ANSIBLE_COLLECTIONS_PATH, the results of every task collected into one JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def collection_root(base: Path) -> Path:
    """``base/ansible_collections/netfabric/flannel`` as a symlink to the repository root."""
    link = base / "ansible_collections" / "netfabric" / "flannel"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


def ansible_env(collections_path: Path, workdir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
        ANSIBLE_HOST_KEY_CHECKING="false",
        ANSIBLE_DEPRECATION_WARNINGS="false",
        PATH=str(VENV_BIN) + os.pathsep + env.get("PATH", ""),
    )
    return env


def yaml_dump(obj: Any) -> str:
    """JSON is YAML: write the playbook as JSON so no YAML library is needed."""
    return json.dumps(obj, indent=1)


class Play:
    """A batch of module tasks run in one ansible-playbook call.

    ``add(name, module, args, check=False)`` queues a task; ``run()`` returns {name: registered result}.
    Every task gets ``ignore_errors`` so that expected failures are recorded, not fatal.
    """

    def __init__(self, collections_path: Path, workdir: Path, defaults: Dict[str, Any]) -> None:
        self.collections_path = collections_path
        self.workdir = workdir
        self.defaults = defaults
        self.tasks: List[Tuple[str, str, Dict[str, Any], bool]] = []
        self.runs = 0

    def add(self, name: str, module: str, args: Dict[str, Any], check: bool = False) -> Play:
        self.tasks.append((name, module, args, check))
        return self

    def run(self, timeout: float = 900) -> Dict[str, Dict[str, Any]]:
        self.runs += 1
        out_file = self.workdir / ("results-%d.json" % self.runs)
        tasks = []
        names = []
        for index, (name, module, args, check) in enumerate(self.tasks):
            var = "r%d" % index
            names.append((name, var))
            tasks.append({
                "name": name,
                "netfabric.flannel." + module: args,
                "register": var,
                "ignore_errors": True,
                "check_mode": check,
                "diff": True,
            })
        collect = "{" + ", ".join("%s: %s" % (json.dumps(name), var) for name, var in names) + "}"
        tasks.append({
            "name": "collect the results",
            "ansible.builtin.copy": {"content": "{{ %s | to_json }}" % collect, "dest": str(out_file)},
            "check_mode": False,
            "diff": False,
        })
        play = [{
            "hosts": "localhost",
            "gather_facts": False,
            "connection": "local",
            "vars": {"ansible_python_interpreter": sys.executable},
            "module_defaults": {"group/netfabric.flannel.etcd": self.defaults},
            "tasks": tasks,
        }]
        path = self.workdir / ("play-%d.yml" % self.runs)
        path.write_text(yaml_dump(play))
        self.tasks = []
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(path)],
            env=ansible_env(self.collections_path, self.workdir), cwd=str(self.workdir),
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0 or not out_file.exists():
            raise AssertionError("ansible-playbook failed (rc=%d):\n%s\n%s"
                                 % (proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:]))
        self.last_output = proc.stdout
        return json.loads(out_file.read_text())


def adhoc(collections_path: Path, workdir: Path, module: str, args: Dict[str, Any],
          extra: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    """``ansible localhost -m <module> -a <json args>``, for one-off calls."""
    cmd = [str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-m", module, "-a", json.dumps(args)]
    return subprocess.run(cmd + (extra or []), env=ansible_env(collections_path, workdir), cwd=str(workdir),
                          capture_output=True, text=True, timeout=600, check=False)
