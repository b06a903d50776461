#!/usr/bin/env bash
# `make sanity`: ansible-test sanity over the whole collection, locally (no docker needed).
#
# ansible-test wants the collection at .../ansible_collections/netfabric/flannel and lists files through
# the nearest git repository above that path.  A copy inside this repository (build/ is git-ignored) would
# look empty to it, so the copy goes outside: $SANITY_DIR (default ${TMPDIR:-/tmp}/netfabric-flannel-sanity).
# The copy leaves out what is not part of the collection (.venv, caches, build output; see galaxy.yml's
# manifest).  ansible-test installs each test's pinned tools into its own virtual environments under
# ~/.ansible/test/venv from the package index (first run only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
PYTHON_VERSION=${SANITY_PYTHON:-$("$VENV_BIN/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
BASE=${SANITY_DIR:-${TMPDIR:-/tmp}/netfabric-flannel-sanity}
DEST=$BASE/ansible_collections/netfabric/flannel

mkdir -p "$DEST"
rsync -a --delete --delete-excluded \
  --exclude /.venv --exclude /.git --exclude /.ansible --exclude /build --exclude /.ci --exclude /lab/.cache \
  --exclude /tests/output --exclude /netfabric-flannel-*.tar.gz \
  --exclude .ruff_cache --exclude .pytest_cache --exclude .hypothesis --exclude __pycache__ \
  --exclude '*.egg-info' --exclude '*.pyc' --exclude 'molecule/*/.cache' \
  ./ "$DEST/"

# ansible-test bootstraps pip in its virtual environments with a script it downloads from its own CI file
# host, which this kind of machine cannot reach (only the package registries are reachable): seed its cache
# with our stand-in (scripts/ansible-test-pip-bootstrap.py) instead of letting it try.
PIP_VERSION=$("$VENV_BIN/python" - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
print(re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages)).group(1))
PY
)
CACHE=$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py
if [ ! -f "$CACHE" ]; then
  mkdir -p "$(dirname "$CACHE")"
  cp scripts/ansible-test-pip-bootstrap.py "$CACHE"
fi

cd "$DEST"
env PATH="$VENV_BIN:$PATH" "$VENV_BIN/ansible-test" sanity --python "$PYTHON_VERSION" --color no "$@"

# Modules run on the managed hosts' Python (3.8 and newer for this ansible-core): when other Python
# versions are installed here (pyenv), check that everything compiles on each of them as well.
EXTRA=""
for dir in "$HOME"/.pyenv/versions/3.*/bin; do
  [ -x "$dir/python3" ] && EXTRA="$EXTRA:$dir"
done
if [ -n "$EXTRA" ] && [ $# -eq 0 ]; then
  env PATH="$VENV_BIN$EXTRA:$PATH" "$VENV_BIN/ansible-test" sanity --test compile --color no
fi
