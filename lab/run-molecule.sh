#!/usr/bin/env bash
# Run the molecule scenarios against the local docker engine and print how long each took.
#   lab/run-molecule.sh                 default scenario for every backend (vxlan, host-gw, udp, wireguard), then tls, seed
#                                       and dualstack
#   lab/run-molecule.sh default:udp tls  selected runs (scenario[:backend])
#   lab/run-molecule.sh vagrant          the Vagrant scenario (builds and adds the box first)
# Makes sure a docker engine answers and the lab images (or the Vagrant box) exist first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
cd "$root"

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(default:vxlan default:host-gw default:udp default:wireguard tls seed dualstack)

case " ${runs[*]} " in
  *" default"*|*" tls"*|*" seed"*|*" dualstack"*)
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

results=()
failed=0
for run in "${runs[@]}"; do
  scenario=${run%%:*}
  backend=""
  [ "$scenario" = "$run" ] || backend=${run#*:}
  label="$scenario${backend:+ ($backend)}"
  # A snapshot of the agent's source and a wheelhouse of this run's own: the idempotence step must not
  # see a new wheel because the working tree (or another run's wheelhouse) changed meanwhile.
  work=$root/lab/.cache/molecule/$scenario${backend:+-$backend}
  mkdir -p "$work/src"
  rsync -a -L --delete --exclude __pycache__ pyproject.toml README.md requirements pyflannel "$work/src/"
  export MOLECULE_FLANNEL_SOURCE=$work/src MOLECULE_FLANNEL_WHEELHOUSE=$work/wheelhouse
  echo "==> molecule test -s $label"
  t0=$SECONDS
  if MOLECULE_BACKEND=${backend:-vxlan} molecule test -s "$scenario"; then
    status=passed
  else
    status=FAILED
    failed=1
  fi
  results+=("$(printf '%-22s %-7s %4ds' "$label" "$status" $((SECONDS - t0)))")
done

echo
echo "molecule results:"
printf '  %s\n' "${results[@]}"
exit $failed
