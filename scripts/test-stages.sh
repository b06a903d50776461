#!/usr/bin/env bash
# The stages of `make test` (full) and `make test-quick` (quick), each timed; ends with a table of every stage
# and of every molecule step with its seconds, whether the run passed or not, so the time budget shows in every
# CI log. Stops at the first failing stage.
#   scripts/test-stages.sh full     ruff, changelog fragments, pytest unit, then pytest integration beside ansible-lint,
#                                   syntax and argspec checks, sanity, collection build and the lab images, then molecule
#                                   (lab/run-molecule.sh's default runs)
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

# One stage may run beside the others (bg_start ... bg_wait); it is stopped when the run ends early.
bg_pid="" bg_label="" bg_log="" bg_secs=""
finish() {
  if [ -n "$bg_pid" ] && kill -0 "$bg_pid" 2>/dev/null; then
    # its process group; just after bg_start the child may not have called setsid yet: then the child itself
    kill -TERM -- "-$bg_pid" 2>/dev/null || kill -TERM "$bg_pid" 2>/dev/null
    wait "$bg_pid" 2>/dev/null
    echo "==> stage $bg_label stopped: a stage beside it failed (its output so far: $bg_log)"
  fi
  report
}
trap finish EXIT

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

# bg_start LABEL COMMAND...: start a stage that runs beside the next ones, in a process group of its own; its
# output goes to build/<label>.log and is printed by bg_wait.
bg_start() {
  bg_label=$1
  shift
  bg_log=$PWD/build/${bg_label// /-}.log
  bg_secs=$PWD/build/${bg_label// /-}.seconds
  echo "==> stage: $bg_label (beside the next stages; output: $bg_log)"
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid bash -c 't0=$(date +%s); "$@"; rc=$?; echo $(( $(date +%s) - t0 )) >"$0"; exit $rc' "$bg_secs" "$@" \
    >"$bg_log" 2>&1 </dev/null &
  bg_pid=$!
}

# bg_wait: wait for the stage bg_start started, print its output and record it; a failure ends the run.
bg_wait() {
  local rc
  wait "$bg_pid"
  rc=$?
  bg_pid=""
  echo "==> stage: $bg_label (ran beside the stages above), its output:"
  cat "$bg_log"
  if [ $rc -eq 0 ]; then
    printf '%s\t%d\t%s\n' "$bg_label" "$(cat "$bg_secs")" passed >>"$TEST_TIMES"
  else
    printf '%s\t%d\t%s\n' "$bg_label" "$(cat "$bg_secs" 2>/dev/null || echo 0)" FAILED >>"$TEST_TIMES"
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
    # Waiting takes most of their time (about 40 % of two cores busy), so the checks that need the CPU run beside
    # them: ansible-lint, syntax and argspec checks, sanity, the collection build and the lab images for molecule
    # (about 3 minutes one after the other). The integration tests' line in the table is their own wall time.
    bg_start "pytest integration" .venv/bin/pytest -n "${PYTEST_WORKERS:-3}" --dist worksteal tests/integration
    stage ansible-lint make --no-print-directory ansible-lint
    stage "syntax-check" make --no-print-directory syntax-check
    stage "argspec-check" make --no-print-directory argspec-check
    stage sanity make --no-print-directory sanity
    stage "collection-build" make --no-print-directory collection-build
    stage "lab images (docker engine, molecule's images)" bash -c 'lab/ensure-docker.sh && lab/build-images.sh all'
    bg_wait
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
