# netfabric.flannel — developer entry points.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := .venv
PY        := $(VENV)/bin/python
PYTEST    := $(VENV)/bin/pytest
TEST_DEBS := etcd-server etcd-client openssh-client iptables iproute2 iperf3 iputils-ping procps rsync git curl shellcheck wireguard-tools wireguard-go tcpdump nftables

.PHONY: help deps venv test test-quick test-unit test-integration lint lab lab-down lab-status molecule test-vagrant bench clean collections-link ansible-lint syntax-check argspec-check sanity collection-build

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

test-integration: deps venv ## integration tests: real etcd, namespaces, netlink (root); three workers
	$(PYTEST) -n $${PYTEST_WORKERS:-3} --dist worksteal tests/integration

# Both end with a table of their stages (and of every molecule step) and the seconds each took.
test: deps venv collections-link ## everything CI runs: ruff, pytest, lint/syntax/argspec, sanity, collection build, molecule
	scripts/test-stages.sh full

test-quick: deps venv collections-link ## the inner loop (a few minutes): ruff, unit tests, ansible-lint, sanity
	scripts/test-stages.sh quick

# The checkout as the collection netfabric.flannel: ansible.cfg puts build/collections-link first on the
# collections path, so `ansible-playbook site.yml` from the repository root uses these roles and modules.
COLLECTIONS_LINK := build/collections-link/ansible_collections/netfabric/flannel
collections-link: ## build/collections-link/: the checkout as collection netfabric.flannel (for ansible-playbook)
	@mkdir -p $(dir $(COLLECTIONS_LINK))
	@ln -sfn $(CURDIR) $(COLLECTIONS_LINK)

# No path list: from the repository root ansible-lint lints the whole collection, galaxy.yml and changelogs/ included
# (galaxy[no-changelog], galaxy[no-repository], ... only fire then). .ansible-lint holds the excludes.
ansible-lint: venv collections-link ## ansible-lint, production profile, over the whole collection (galaxy.yml included)
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link $(VENV)/bin/ansible-lint --profile production

syntax-check: venv collections-link ## ansible-playbook --syntax-check of site.yml, playbooks/site.yml, netfabric.flannel.site
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link $(VENV)/bin/ansible-playbook --syntax-check -i inventory/example.yml site.yml
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link $(VENV)/bin/ansible-playbook --syntax-check -i inventory/example.yml playbooks/site.yml
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link $(VENV)/bin/ansible-playbook --syntax-check -i inventory/example.yml netfabric.flannel.site

argspec-check: venv collections-link ## the roles' argument_specs reject wrong values and accept inventory/example.yml (validation only)
	@mkdir -p build
	@if ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link ANSIBLE_NOCOLOR=1 $(VENV)/bin/ansible-playbook \
	    -i inventory/example.yml tests/argspec/argspec.yml --tags argspec > build/argspec-check.log 2>&1; then \
	  grep -hoE '(all [0-9]+ wrong values rejected by the argument specs)' build/argspec-check.log; \
	  echo "argspec-check: $$(grep -c 'Validating arguments against arg spec' build/argspec-check.log) validations ran, example inventory accepted by every entry point"; \
	else tail -40 build/argspec-check.log; echo "argspec-check FAILED (full log: build/argspec-check.log)"; exit 1; fi

BACKEND      ?= vxlan
ETCD_MEMBERS ?= 1
IPV6         ?= 0
lab: venv collections-link ## local 3-host lab (systemd containers) running site.yml; BACKEND=<any datapath of the catalogue, default vxlan> ETCD_MEMBERS=1|3 IPV6=1 (dual stack)
	$(PY) lab/lab.py up --backend $(BACKEND) --etcd-members $(ETCD_MEMBERS)$(if $(filter 1,$(IPV6)), --ipv6)

# The view real hosts get (playbooks/status.yml), run against the lab's inventory; non-zero exit when
# something is wrong. `lab/lab.py status` adds the lab's container-to-container ping matrix.
lab-status: venv collections-link ## playbooks/status.yml on the running lab: services, leases, docker0, ping matrix
	@if [ ! -f lab/inventory/hosts.yml ]; then echo "lab-status: no lab is running (make lab starts one)"; exit 1; fi
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/collections-link $(VENV)/bin/ansible-playbook -i lab/inventory playbooks/status.yml

lab-down: ## remove the lab's containers, network and volumes (keeps the cached images)
	python3 lab/lab.py down

# With no MOLECULE_RUNS, lab/run-molecule.sh runs its default set (the one `make test` runs).
molecule: venv collections-link ## molecule on docker: cluster (every backend, dual stack, member down, teardown) and seed; MOLECULE_RUNS="default:udp" picks
	lab/run-molecule.sh $(MOLECULE_RUNS)

VAGRANT_DRIVER ?= qemu
test-vagrant: venv collections-link ## molecule/vagrant in libvirt VMs (slow; not in make test); VAGRANT_DRIVER=kvm where KVM runs stock kernels
	MOLECULE_VAGRANT_DRIVER=$(VAGRANT_DRIVER) lab/run-molecule.sh vagrant

bench: deps venv ## datapath (iperf3 over raw veth and over every datapath backend) and control-plane benchmarks (root)
	$(PY) bench/datapath.py
	$(PY) bench/control_plane.py

sanity: deps venv ## ansible-test sanity over the whole collection (a copy outside the checkout; no docker)
	scripts/sanity.sh

collection-build: deps venv ## ansible-galaxy collection build, install the tarball, run its modules against a real etcd
	$(PY) -u tests/collection_build.py

clean: ## remove build artefacts (keeps .venv)
	rm -rf build .pytest_cache .ruff_cache .hypothesis netfabric-flannel-*.tar.gz
