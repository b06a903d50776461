#!/usr/bin/env bash
# Run the molecule scenarios against the local docker engine and print how long each step took.
#   lab/run-molecule.sh                 the runs `make test` makes: cluster (one live cluster, many operations), seed
#   lab/run-molecule.sh cluster          one live cluster: converge (+ idempotence) + verify with each backend of
#                                        cluster_backends in turn (the last one dual stack), an etcd member down,
#                                        the day-2 operations, status and teardown
#   lab/run-molecule.sh default:udp tls  other runs (scenario[:backend]: a scenario's own `molecule test`)
#   lab/run-molecule.sh vagrant          the Vagrant scenario (builds and adds the box first)
# Makes sure a docker engine answers and the lab images (or the Vagrant box) exist first. The agent's source is
# copied and its wheelhouse built once per invocation, shared by every run of it.
# With TEST_TIMES=<file>, one line "<label><TAB><seconds><TAB><status>" per step is appended to that file
# (make test prints them as its stage table).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
cd "$root"

# The backends the cluster scenario switches through, in order (tests/unit/.../test_catalogue.py: every
# datapath of the backend catalogue); the last one runs dual stack. MOLECULE_CLUSTER_BACKENDS="vxlan" (a list
# starting with vxlan) runs fewer, e.g. to work on a later step.
cluster_backends=(vxlan host-gw udp wireguard)
if [ -n "${MOLECULE_CLUSTER_BACKENDS:-}" ]; then
  read -r -a cluster_backends <<<"$MOLECULE_CLUSTER_BACKENDS"
fi

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(cluster seed)

case " ${runs[*]} " in
  *" default"*|*" tls"*|*" seed"*|*" cluster"*)
    "$here/ensure-docker.sh"
    "$here/build-images.sh" all ;;
esac
case " ${runs[*]} " in
  *" vagrant"*)
    "$here/build-vagrant-box.sh"
    # The verify step saves the busybox image on the controller: docker and the image are needed too.
    "$here/ensure-docker.sh"
    "$here/build-images.sh" busybox ;;
esac

# The scenarios run with `prerun: false` (no copy of the collection installed by molecule); ansible.cfg
# puts build/collections-link first, the checkout as netfabric.flannel (same as `make collections-link`).
mkdir -p build/collections-link/ansible_collections/netfabric
ln -sfn "$root" build/collections-link/ansible_collections/netfabric/flannel
export ANSIBLE_COLLECTIONS_PATH=$root/build/collections-link

# A snapshot of the agent's source and one wheelhouse for this invocation: an idempotence step must not see
# a new wheel because the working tree changed meanwhile; every run and step shares the one build.
work=$root/lab/.cache/molecule/run
mkdir -p "$work/src"
rsync -a -L --delete --exclude __pycache__ pyproject.toml README.md requirements pyflannel "$work/src/"
export MOLECULE_FLANNEL_SOURCE=$work/src MOLECULE_FLANNEL_WHEELHOUSE=$work/wheelhouse
# Built here once, before any scenario runs: scenarios running side by side must not build it at the same time
# (the role's build then finds it up to date).
python3 roles/flannel/files/build_wheelhouse.py --source "$work/src" --out "$work/wheelhouse" --deps >/dev/null

results=()
failed=0

# step LABEL COMMAND...: run, time and record one step; returns the command's status.
step() {
  local label=$1 status rc t0=$SECONDS
  shift
  echo "==> $label"
  if "$@"; then status=passed; rc=0; else status=FAILED; rc=1; fi
  results+=("$(printf '%-44s %-7s %4ds' "$label" "$status" $((SECONDS - t0)))")
  if [ -n "${TEST_TIMES:-}" ]; then
    printf '%s\t%d\t%s\n' "molecule $label" $((SECONDS - t0)) "$status" >>"$TEST_TIMES"
  fi
  return $rc
}

# site.yml --check --diff -v on the live cluster, as a switch to wireguard with a PSK and an etcd login would
# run: it must succeed, change nothing on the nodes, and print none of the secrets (the PSK, the password, the
# etcd CA's and certificates' private keys). The secrets reach ansible in a vars file, not on a command line.
# shellcheck disable=SC2317  # called through step
secrets_check() {
  local dir=$work/secrets out psk pw pki key found=0
  rm -rf "$dir" && mkdir -m 0700 "$dir"
  out=$dir/check-diff.log
  psk=$(head -c 32 /dev/urandom | base64)
  pw=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  printf '{"flannel_backend": {"type": "wireguard", "psk": "%s"}, "flannel_etcd_username": "flannel", "flannel_etcd_password": "%s"}\n' \
    "$psk" "$pw" >"$dir/secrets.json"
  if ! MOLECULE_BACKEND=wireguard molecule converge -s cluster -- --check --diff -v -e "@$dir/secrets.json" >"$out" 2>&1; then
    tail -40 "$out"
    echo "secrets check: site.yml --check --diff -v failed (log: $out)"
    return 1
  fi
  grep -E '^\s*(│ )?cluster-node[0-9]+ +: ok=' "$out" | sed 's/^/  /' || true
  if grep -qF -- "$psk" "$out"; then echo "secrets check: the wireguard PSK is in the output"; found=1; fi
  if grep -qF -- "$pw" "$out"; then echo "secrets check: the etcd password is in the output"; found=1; fi
  pki=$(find "$HOME/.ansible/tmp" -maxdepth 2 -path '*/molecule.*.cluster/etcd-pki' -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -1 | cut -d' ' -f2-)
  [ -n "$pki" ] || { echo "secrets check: no etcd PKI directory of the cluster found"; return 1; }
  while IFS= read -r key; do
    # every base64 line of the key's PEM body, except a line that is all public key: an EC key's PEM ends with
    # its public point, which certificate information (public, and shown with -v) carries at the same alignment
    pub=$(openssl pkey -in "$key" -pubout 2>/dev/null | grep -v -- ----- | tr -d '\n')
    while IFS= read -r line; do
      case $line in -----*|"") continue ;; esac
      if [ -n "$pub" ] && [[ $pub == *"${line%%=*}"* ]]; then continue; fi
      if grep -qF -- "$line" "$out"; then echo "secrets check: private key $key is in the output"; found=1; break; fi
    done <"$key"
  done < <(find "$pki" -name '*.key')
  if docker exec cluster-node1 grep -qF -- "$pw" /etc/flannel/flanneld-secrets.env 2>/dev/null; then
    echo "secrets check: check mode wrote the password to cluster-node1"; found=1
  fi
  echo "secrets check: $(find "$pki" -name '*.key' | wc -l) private keys, the PSK and the password searched in $(wc -l <"$out") lines"
  rm -f "$dir/secrets.json"
  return "$found"
}

# The day-2 operations on the live cluster, each run as an operator runs it (playbooks/*.yml, its own
# ansible-playbook) while the containers of every pair of hosts ping each other (molecule/shared/pings_*.yml);
# each prints its duration and packets sent/received/lost, collected in $DAY2_REPORT and printed at the end.
# shellcheck disable=SC2317  # called through cluster_steps
day2_steps() {
  local s=cluster next=$work/src-next
  export DAY2_REPORT=$work/day2-report.tsv
  : >"$DAY2_REPORT"
  # The upgrade's new builds: the agent's source with a post-release version (another wheel, another build
  # directory on the nodes), and etcd 3.5 as a release tarball (the members run Debian's 3.4 package so far).
  rsync -a --delete "$work/src/" "$next/"
  sed -i -E 's/^version = "([^"]+)"/version = "\1.post1"/' "$next/pyproject.toml"
  sed -i -E 's/^__version__ = "([^"]+)"/__version__ = "\1.post1"/' "$next/pyflannel/__init__.py"
  MOLECULE_AGENT_VERSION=$(sed -nE 's/^version = "([^"]+)"/\1/p' "$next/pyproject.toml")
  # build-etcd-tarball.sh prints the tarball's path, then sha256:<hex>
  tarball_out=$("$here/build-etcd-tarball.sh")
  MOLECULE_ETCD_TARBALL=$(tail -2 <<<"$tarball_out" | head -1)
  MOLECULE_ETCD_CHECKSUM=$(tail -1 <<<"$tarball_out")
  MOLECULE_ETCD_VERSION=$(basename "$MOLECULE_ETCD_TARBALL" | sed -nE 's/^etcd-v([0-9.]+)-linux-.*/\1/p')
  export MOLECULE_AGENT_VERSION MOLECULE_ETCD_TARBALL MOLECULE_ETCD_CHECKSUM MOLECULE_ETCD_VERSION MOLECULE_ETCD_INSTALL=tarball
  export MOLECULE_FLANNEL_SOURCE=$next MOLECULE_FLANNEL_WHEELHOUSE=$work/wheelhouse-next
  MOLECULE_VERIFY=day2_upgrade.yml step "$s: rolling upgrade (agent, etcd 3.4 -> 3.5)" molecule verify -s $s || return 1
  # The agent's rollback: a run of the previous version (the first snapshot and wheelhouse); the later steps run it.
  export MOLECULE_UPGRADED_AGENT_VERSION=$MOLECULE_AGENT_VERSION
  MOLECULE_AGENT_VERSION=$(sed -nE 's/^version = "([^"]+)"/\1/p' "$work/src/pyproject.toml")
  export MOLECULE_FLANNEL_SOURCE=$work/src MOLECULE_FLANNEL_WHEELHOUSE=$work/wheelhouse
  MOLECULE_VERIFY=day2_rollback.yml step "$s: rollback of the agent upgrade" molecule verify -s $s || return 1
  MOLECULE_VERIFY=day2_restore.yml step "$s: etcd backup and restore" molecule verify -s $s || return 1
  MOLECULE_VERIFY=day2_replace.yml step "$s: member replacement (host lost)" molecule verify -s $s || return 1
  MOLECULE_VERIFY=day2_remove_node.yml step "$s: node removal (the lost host back)" molecule verify -s $s || return 1
  MOLECULE_VERIFY=day2_rejoin.yml step "$s: a new member joins" molecule verify -s $s || return 1
  MOLECULE_VERIFY=day2_certs.yml step "$s: certificate rotation (new CA)" molecule verify -s $s || return 1
  echo "day-2 operations (seconds, ordered pairs pinging, packets sent / received / lost):"
  awk -F'\t' '{printf "  %-14s %7.1f s  %d pairs  %6d sent  %6d received  %d lost\n", $1, $2, $3, $4, $5, $6}' "$DAY2_REPORT"
}

# One live cluster through every operation; stops at the first failing step, always destroys.
cluster_steps() {
  local s=cluster backend
  export MOLECULE_IPV6=false MOLECULE_VERIFY=verify.yml
  step "$s: syntax" molecule syntax -s $s || return 1
  step "$s: create" molecule create -s $s || return 1
  step "$s: prepare" molecule prepare -s $s || return 1
  for backend in "${cluster_backends[@]}"; do
    # host-gw runs with EnableNFTables: the switch to it and away from it moves the rules between iptables
    # and nftables on a live network. The last backend (wireguard) runs dual stack: the switch to it also turns
    # IPv6 on, and the operations after it (an etcd member down, the day-2 operations, teardown) run on a
    # dual-stack network.
    export MOLECULE_BACKEND=$backend MOLECULE_NFTABLES=false MOLECULE_IPV6=false
    [ "$backend" != host-gw ] || export MOLECULE_NFTABLES=true
    [ "$backend" != "${cluster_backends[-1]}" ] || export MOLECULE_IPV6=true
    if [ "$backend" = wireguard ]; then
      step "$s: check --diff -v shows no secret" secrets_check || return 1
    fi
    step "$s: converge ($backend$([ "$MOLECULE_IPV6" = true ] && echo ', dual stack'))" molecule converge -s $s || return 1
    # The second run that must change nothing: after the first install. On the wireguard dual-stack network the
    # day-2 operations' second runs (upgrade.yml: site.yml's plays; site.yml after the rejoin; rotate-certs.yml)
    # must change nothing as well, and so must the teardown's; the backend switches before it change only the
    # network config and the agent's options. MOLECULE_IDEMPOTENCE_ALL=1 adds a second run after every switch.
    if [ "$backend" = "${cluster_backends[0]}" ] || [ "${MOLECULE_IDEMPOTENCE_ALL:-0}" = 1 ]; then
      step "$s: idempotence ($backend)" molecule idempotence -s $s || return 1
    fi
    step "$s: verify ($backend)" molecule verify -s $s || return 1
  done
  MOLECULE_VERIFY=member_down.yml step "$s: etcd member down" molecule verify -s $s || return 1
  # The day-2 operations (about 15 minutes on two cores); MOLECULE_DAY2=0 leaves them out, e.g. to work on a
  # step before them.
  if [ "${MOLECULE_DAY2:-1}" = 1 ]; then day2_steps || return 1; fi
  MOLECULE_VERIFY=teardown.yml step "$s: status and teardown" molecule verify -s $s || return 1
}

run_cluster() {
  local rc=0
  step "cluster: destroy (leftovers)" molecule destroy -s cluster || return 1
  cluster_steps || rc=1
  step "cluster: destroy" molecule destroy -s cluster || rc=1
  return $rc
}

# cluster and seed use containers, networks and addresses of their own: with both in the runs and
# MOLECULE_PARALLEL=1, seed runs beside cluster (its output goes to a log, printed when it ends). Off by default:
# on two cores one scenario keeps both busy, and side by side they took longer than one after the other (seed 881 s
# instead of 349 s, cluster's steps 2.5 times as long meanwhile). For machines with more cores.
seed_pid=""
if [ "${MOLECULE_PARALLEL:-0}" = 1 ] && [[ " ${runs[*]} " == *" cluster "* && " ${runs[*]} " == *" seed "* ]]; then
  seed_log=$work/seed.log
  # shellcheck disable=SC2030,SC2031  # the subshell keeps a results list of its own and prints it
  (
    results=()
    MOLECULE_BACKEND=vxlan step "seed: test" molecule test -s seed; rc=$?
    printf '  %s\n' "${results[@]}"
    exit $rc
  ) >"$seed_log" 2>&1 &
  seed_pid=$!
  echo "==> seed: test runs beside cluster (log: $seed_log)"
  mapfile -t runs < <(printf '%s\n' "${runs[@]}" | grep -vx seed)
fi

for run in "${runs[@]}"; do
  scenario=${run%%:*}
  backend=""
  [ "$scenario" = "$run" ] || backend=${run#*:}
  t0=$SECONDS
  if [ "$scenario" = cluster ]; then
    run_cluster || failed=1
  else
    label="$scenario${backend:+ ($backend)}"
    MOLECULE_BACKEND=${backend:-vxlan} step "$label: test" molecule test -s "$scenario" || failed=1
  fi
  [ $failed = 0 ] || break
done

if [ -n "$seed_pid" ]; then
  if wait "$seed_pid"; then seed_status=passed; else seed_status=FAILED; failed=1; fi
  echo "==> seed (ran beside cluster): $seed_status; its output:"
  cat "$seed_log"
  # shellcheck disable=SC2031  # the cluster's list, not the subshell's
  results+=("$(tail -1 "$seed_log" | sed 's/^  //')")
fi

echo
echo "molecule results:"
printf '  %s\n' "${results[@]}"
exit $failed
