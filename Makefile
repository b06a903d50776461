# netfabric.flannel — developer entry points.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
PYTEST    := $(VENV)/bin/pytest
TEST_DEBS := etcd-server etcd-client iptables iproute2 iperf3 iputils-ping procps rsync git curl

.PHONY: help deps venv test test-unit test-integration lint lab lab-down lab-status molecule test-vagrant clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## install the Debian packages the tests need (root, only what is missing)
	@scripts/install-deps.sh $(TEST_DEBS)

venv: $(VENV)/.installed ## build .venv/ with the agent, ansible-core and the test tools

$(VENV)/.installed: pyproject.toml requirements/runtime.txt requirements/dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

lint: venv ## ruff over the Python code
	$(VENV)/bin/ruff check .

test-unit: venv ## unit tests only (no root needed)
	$(PYTEST) tests/unit

test-integration: deps venv ## integration tests: real etcd, namespaces, netlink (root)
	$(PYTEST) tests/integration

test: deps venv ## everything CI runs
	$(VENV)/bin/ruff check .
	$(PYTEST) tests/unit tests/integration

BACKEND      ?= vxlan
ETCD_MEMBERS ?= 1
lab: venv ## local 3-host lab (systemd containers) running site.yml; BACKEND=vxlan|host-gw|udp ETCD_MEMBERS=1|3
	$(PY) lab/lab.py up --backend $(BACKEND) --etcd-members $(ETCD_MEMBERS)

lab-status: venv ## hosts, leases, docker0 and the container ping matrix of the running lab
	$(PY) lab/lab.py status

lab-down: ## remove the lab's containers, network and volumes (keeps the cached images)
	python3 lab/lab.py down

molecule: venv ## molecule scenarios on docker: default for vxlan, host-gw, udp, then tls (prints timings)
	lab/run-molecule.sh $(MOLECULE_RUNS)

VAGRANT_DRIVER ?= qemu
test-vagrant: venv ## molecule/vagrant in libvirt VMs (slow; not in make test); VAGRANT_DRIVER=kvm where KVM runs stock kernels
	MOLECULE_VAGRANT_DRIVER=$(VAGRANT_DRIVER) lab/run-molecule.sh vagrant

clean: ## remove build artefacts (keeps .venv)
	rm -rf build .pytest_cache .ruff_cache .hypothesis netfabric-flannel-*.tar.gz
