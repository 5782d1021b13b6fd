#!/usr/bin/env bash
# Tests that run inside nova's own functional test framework, each suite as
# its own stestr run (nova's test package patches the process, so these
# never share workers with the project's main run, tools/run-tests.sh):
#
#   peer        nova's functional libvirt live-migration tests (and the
#               live-migration regression tests) unchanged, with
#               SecureLibvirtDriver swapped in, enforcement disabled and
#               required (tests/nova_peer)
#   functional  secmig's own functional tests through nova's API
#               (tests/functional/nova)
#
# Usage: tools/run-nova-peer-tests.sh [peer|functional|all] [stestr args]
# (default: all). Each suite keeps its own stestr repository
# (tests/nova_peer/.stestr, tests/functional/nova/.stestr) and ends with a
# "N passed, N failed, N skipped" line; with SECMIG_TEST_COUNTS=FILE each
# suite's counts are also added to FILE (tools/test_summary.py --add-to).
#
# nova runs with native threads (OS_NOVA_DISABLE_EVENTLET_PATCHING=1, nova
# 34's default for nova-compute). Set OS_NOVA_DISABLE_EVENTLET_PATCHING=0
# for nova's eventlet mode: there the in-process test broker's sqlite
# (which blocks in C while it waits for a lock) shares one OS thread with
# every green thread of the test, which can stall a run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
suite=${1:-all}
[ $# -gt 0 ] && shift
PY=.venv/bin/python
export SECMIG_NOVA_TESTS=1
export OS_WSGI__API_PASTE_CONFIG=${OS_WSGI__API_PASTE_CONFIG:-$PWD/.venv/etc/nova/api-paste.ini}
export OS_NOVA_DISABLE_EVENTLET_PATCHING=${OS_NOVA_DISABLE_EVENTLET_PATCHING:-1}
# nova's test base fails a test that runs longer than this (seconds)
# instead of letting it hang the run.
export OS_TEST_TIMEOUT=${OS_TEST_TIMEOUT:-300}
# ... and each suite ends after this many seconds, whatever hangs.
SUITE_TIMEOUT=${SECMIG_NOVA_SUITE_TIMEOUT:-2400}

run_suite() {
    local name=$1 path=$2
    shift 2
    echo "== $name: $path"
    local start=$SECONDS
    # A hard bound on the whole suite: a test of nova's that deadlocks in
    # its clean-up (seen under heavy load: an executor shutdown waiting for
    # a periodic task's future) must fail the run, not hang CI.
    timeout --kill-after=30 "$SUITE_TIMEOUT" \
        "$PY" -m stestr --test-path "$path" --top-dir ./ --repo-url "$path" \
        run "$@"
    local rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "== $name: STOPPED after $SUITE_TIMEOUT s" \
             "(SECMIG_NOVA_SUITE_TIMEOUT): a test hung, see above"
    fi
    local add=()
    if [ -n "${SECMIG_TEST_COUNTS:-}" ]; then
        add=(--add-to "$(realpath -m "$SECMIG_TEST_COUNTS")")
    fi
    (cd "$path" && "$OLDPWD/$PY" "$OLDPWD/tools/test_summary.py" \
        "${add[@]}") || rc=1
    echo "== $name: $((SECONDS - start)) s"
    return $rc
}

rc=0
case $suite in
    peer) run_suite peer ./tests/nova_peer "$@" || rc=1 ;;
    functional) run_suite functional ./tests/functional/nova "$@" || rc=1 ;;
    all)
        run_suite functional ./tests/functional/nova "$@" || rc=1
        run_suite peer ./tests/nova_peer "$@" || rc=1
        ;;
    *) echo "usage: $0 [peer|functional|all] [stestr args]" >&2; exit 2 ;;
esac
exit $rc
