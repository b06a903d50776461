#!/usr/bin/env bash
# The stages of `make test` (full) and `make test-quick` (quick), each timed; ends with a table of every stage
# and of every molecule step with its seconds, whether the run passed or not, so the time budget shows in every
# CI log. Stops at the first failing stage.
#   scripts/test-stages.sh full     ruff, changelog fragments, pytest (unit + integration), ansible-lint, syntax and argspec checks,
#                                   sanity, collection build, molecule (lab/run-molecule.sh's default runs)
#   scripts/test-stages.sh quick    ruff, changelog fragments, unit tests, ansible-lint, sanity
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
mode=${1:-full}
mkdir -p build
export TEST_TIMES=$PWD/build/test-times.tsv
: >"$TEST_TIMES"
start=$SECONDS

report() {
  echo
  if [ "$mode" = quick ]; then echo "make test-quick: stages and seconds"; else echo "make test: stages and seconds"; fi
  awk -F'\t' '{ printf "  %-56s %-7s %5ds\n", $1, $3, $2 }' "$TEST_TIMES"
  printf '  %-56s %-7s %5ds\n' "total" "" $((SECONDS - start))
}
trap report EXIT

# stage LABEL COMMAND...: run and time one stage; a failing stage ends the run.
stage() {
  local label=$1 t0=$SECONDS rc
  shift
  echo "==> stage: $label"
  "$@"
  rc=$?
  if [ $rc -eq 0 ]; then
    printf '%s\t%d\t%s\n' "$label" $((SECONDS - t0)) passed >>"$TEST_TIMES"
  else
    printf '%s\t%d\t%s\n' "$label" $((SECONDS - t0)) FAILED >>"$TEST_TIMES"
    exit $rc
  fi
}

case $mode in
  full)
    stage ruff .venv/bin/ruff check .
    stage "changelog fragments" .venv/bin/antsibull-changelog lint
    stage "pytest unit" .venv/bin/pytest tests/unit
    # Three workers (pytest-xdist) on 2 cores: most of a test's time is waiting (leases, outages, pings), so
    # 6 min instead of 16 one by one and 8 with two workers; every test builds its own namespaces, etcd and
    # key prefixes, so they do not meet. PYTEST_WORKERS=0 runs them one by one.
    stage "pytest integration" .venv/bin/pytest -n "${PYTEST_WORKERS:-3}" --dist worksteal tests/integration
    stage ansible-lint make --no-print-directory ansible-lint
    stage "syntax-check" make --no-print-directory syntax-check
    stage "argspec-check" make --no-print-directory argspec-check
    stage sanity make --no-print-directory sanity
    stage "collection-build" make --no-print-directory collection-build
    # lab/run-molecule.sh records each step (create, converge/idempotence/verify per operation, ...) itself.
    t0=$SECONDS
    echo "==> stage: molecule"
    if lab/run-molecule.sh; then status=passed; rc=0; else status=FAILED; rc=1; fi
    printf '%s\t%d\t%s\n' "molecule (all runs)" $((SECONDS - t0)) $status >>"$TEST_TIMES"
    exit $rc
    ;;
  quick)
    stage ruff .venv/bin/ruff check .
    stage "changelog fragments" .venv/bin/antsibull-changelog lint
    stage "pytest unit" .venv/bin/pytest -q tests/unit
    stage ansible-lint make --no-print-directory ansible-lint
    stage sanity make --no-print-directory sanity
    ;;
  *)
    echo "usage: $0 full|quick" >&2
    exit 2
    ;;
esac
