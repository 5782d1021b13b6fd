#!/usr/bin/env bash
# Run the cloud tests (tests/functional/cloud): bring the one-machine
# OpenStack up (tools/cloud/cloud.sh up), run the tests against it with the
# real CLI, tear it down, print each phase's duration and the usual
# "N passed, N failed, N skipped" line (tools/test_summary.py; added to
# $SECMIG_TEST_COUNTS when set). With SECMIG_CLOUD_KEEP=1 the cloud is left up
# (and reused if it already is).
#
#   tools/cloud/run-tests.sh [stestr args]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo" || exit 1
state=${SECMIG_CLOUD_DIR:-$repo/.cloud}
export SECMIG_CLOUD_ENV=$state/cloud.env
# A stestr repository of its own: the project's .stestr may be in use by a
# concurrent run of the main suite.
stestr=(.venv/bin/python -m stestr --test-path ./tests/functional/cloud
        --top-dir ./ --repo-url "$state/stestr")

phase() {
    local name=$1 t0=$SECONDS rc
    shift
    "$@"
    rc=$?
    echo "== $name: $((SECONDS - t0)) s (rc $rc)"
    return $rc
}

rc=0
if [ "${SECMIG_CLOUD_KEEP:-0}" = 1 ] && [ -f "$SECMIG_CLOUD_ENV" ] &&
        python3 tools/cloud/cloud.py status >/dev/null; then
    echo "== reusing the running cloud ($state)"
else
    phase up bash tools/cloud/cloud.sh up || rc=1
fi
ran=0
if [ $rc = 0 ]; then
    ran=1
    mkdir -p "$state/stestr"
    phase tests "${stestr[@]}" run --concurrency 1 "$@" || rc=1
    "${stestr[@]}" last --subunit | .venv/bin/subunit2csv 2>/dev/null |
        awk -F, 'NR > 1 {print "   " $1 ": " $2}' || true
fi
if [ "${SECMIG_CLOUD_KEEP:-0}" != 1 ]; then
    phase down python3 tools/cloud/cloud.py down || rc=1
fi
if [ "$ran" != 1 ]; then
    echo "0 passed, 1 failed, 0 skipped (the cloud did not come up; see above)"
    if [ -n "${SECMIG_TEST_COUNTS:-}" ]; then
        echo '{"passed": 0, "failed": 1, "skipped": 0, "failed_tests": ["tools/cloud/cloud.sh up"]}' \
            >> "$SECMIG_TEST_COUNTS"
    fi
    exit 1
fi
add=()
[ -n "${SECMIG_TEST_COUNTS:-}" ] && add=(--add-to "$SECMIG_TEST_COUNTS")
.venv/bin/python tools/test_summary.py --repo-url "$state/stestr" \
    "${add[@]}" || rc=1
exit $rc
