#!/usr/bin/env bash
# The project's test command (README.md, .ci/run), for a fresh Debian 12
# machine as root: installs the system packages (RabbitMQ, libvirt, QEMU),
# sets up .venv, builds the lab guest, lints, and runs secmig-nova's test
# suites with stestr (real Keystone, RabbitMQ and libvirt + QEMU, all
# started by the tests' fixtures). Prints how long each step and suite
# took, and ends with one line "N passed, N failed, N skipped" summed over
# the suites' stestr results, then a "FAILED: <test id>" line per failure.
# The cloud suite brings up a real OpenStack on this machine (MariaDB,
# RabbitMQ, Keystone, Placement, Glance, neutron, nova with two
# nova-computes on the lab's libvirt hosts) and tears it down.
#
# Usage: tools/run-tests.sh [SUITE] [stestr args]
#
#   all         (default) every suite below, in this order
#   main        secmig-nova's own tests: unit, functional, the lab
#   functional  ours inside nova's functional framework (tests/functional/nova)
#   peer        nova's live-migration tests with the driver (tests/nova_peer)
#   cloud       `openstack server ...` on the real cloud (tests/functional/cloud,
#               through tools/cloud/run-tests.sh)
#   prepare     only install, set up and lint
#
# stestr args apply to the main suite (all, main) or to the nova suite
# named. SECMIG_TESTS_PREPARED=1 skips the install/set-up/lint step (used
# by tools/stress-tests.sh, which does it once).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
suite=all
case ${1:-} in
    all|main|functional|peer|cloud|prepare) suite=$1; shift ;;
    -*|'') ;;
    *) echo "usage: $0 [all|main|functional|peer|cloud|prepare] [stestr args]" >&2
       exit 2 ;;
esac

step() {
    local name=$1 start=$SECONDS
    shift
    "$@"
    local rc=$?
    echo "== $name: $((SECONDS - start)) s$([ $rc = 0 ] || echo " (FAILED, exit $rc)")"
    return "$rc"
}

if [ "${SECMIG_TESTS_PREPARED:-0}" != 1 ]; then
    step install bash tools/install-deps.sh || exit 1
    step venv bash tools/setup-venv.sh || exit 1
    step guest bash tools/lab/guest.sh build || exit 1
    step flake8 .venv/bin/flake8 || exit 1
fi
if [ "$suite" = prepare ]; then
    exit 0
fi

totals=$(mktemp)
trap 'rm -f "$totals"' EXIT
export SECMIG_TEST_COUNTS=$totals

# shellcheck disable=SC2317  # invoked through step
run_main() {
    # nova's own live-migration tests (tests/nova_peer) and ours inside
    # nova's test framework (tests/functional/nova) patch the whole
    # process: they run apart, through tools/run-nova-peer-tests.sh.
    .venv/bin/python -m stestr --test-path ./tests run \
        --exclude-regex '^tests\.(nova_peer|functional\.(nova|cloud))\.' \
        "$@"
    local rc=$?
    .venv/bin/python tools/test_summary.py --add-to "$totals" || rc=1
    return "$rc"
}

rc=0
case $suite in
    all)
        step main run_main "$@" || rc=1
        bash tools/run-nova-peer-tests.sh all || rc=1
        step cloud bash tools/cloud/run-tests.sh || rc=1
        ;;
    cloud) step cloud bash tools/cloud/run-tests.sh "$@" || rc=1 ;;
    main) step main run_main "$@" || rc=1 ;;
    functional|peer) bash tools/run-nova-peer-tests.sh "$suite" "$@" || rc=1 ;;
esac
echo "== all runs:"
.venv/bin/python tools/test_summary.py --total "$totals" || rc=1
exit $rc
