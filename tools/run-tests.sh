#!/usr/bin/env bash
# The project's test command (README.md, .ci/run), for a fresh Debian 12
# machine as root: installs the system packages (RabbitMQ, libvirt, QEMU),
# sets up .venv, builds the lab guest, lints, and runs secmig-nova's own
# test suite with stestr (real Keystone, RabbitMQ and libvirt + QEMU, all
# started by the tests' fixtures). Ends with one line
# "N passed, N failed, N skipped" taken from the stestr results.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh || exit 1
bash tools/setup-venv.sh || exit 1
bash tools/lab/guest.sh build || exit 1
.venv/bin/flake8 || { echo "flake8 failed"; exit 1; }
totals=$(mktemp)
trap 'rm -f "$totals"' EXIT
export SECMIG_TEST_COUNTS=$totals
# nova's own live-migration tests (tests/nova_peer) and ours inside nova's
# test framework (tests/functional/nova) patch the whole process: they run
# apart, through tools/run-nova-peer-tests.sh.
.venv/bin/python -m stestr --test-path ./tests run \
    --exclude-regex '^tests\.(nova_peer|functional\.nova)\.' "$@"
rc=$?
.venv/bin/python tools/test_summary.py --add-to "$totals" || rc=1
bash tools/run-nova-peer-tests.sh all || rc=1
echo "== all runs:"
.venv/bin/python tools/test_summary.py --total "$totals" || rc=1
exit $rc
