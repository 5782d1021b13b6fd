#!/usr/bin/env bash
# Runs the test suite N times on a busy machine, to find verdicts that
# depend on timing (not part of CI; CI runs unloaded).
#
#   tools/stress-tests.sh N [SUITE]     SUITE as in tools/run-tests.sh
#                                       (default: all)
#
# Installs and lints once (tools/run-tests.sh prepare), then starts HOGS
# busy processes (default 2, one per core here) that compete with the
# tests for the CPU, and runs `tools/run-tests.sh SUITE` N times. The hogs
# are bounded in time (LIMIT seconds, default 150 minutes per run) and
# stopped when the tool ends, however it ends. Each run's log is kept in
# .stress/run-<i>.log. Prints each run's "N passed, N failed, N skipped"
# line and, at the end, the tests that failed in any run with how many
# times. Exits 0 only if every run passed.
#
# Environment: SECMIG_STRESS_HOGS (2), SECMIG_STRESS_LIMIT (9000 * N s).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
usage() { echo "usage: $0 N [all|main|functional|peer|cloud]" >&2; exit 2; }
[[ ${1:-} =~ ^[1-9][0-9]*$ ]] || usage
runs=$1
suite=${2:-all}
case $suite in all|main|functional|peer|cloud) ;; *) usage ;; esac
hogs=${SECMIG_STRESS_HOGS:-2}
limit=${SECMIG_STRESS_LIMIT:-$((9000 * runs))}
[[ $hogs =~ ^[0-9]+$ && $limit =~ ^[1-9][0-9]*$ ]] || usage

bash tools/run-tests.sh prepare || exit 1

logs=.stress
mkdir -p "$logs"
counts=$(mktemp)
hog_pids=()
stop_hogs() {
    [ ${#hog_pids[@]} -gt 0 ] && kill "${hog_pids[@]}" 2>/dev/null
    wait 2>/dev/null
    rm -f "$counts"
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 "$hogs"); do
    timeout "$limit" sh -c 'while :; do :; done' &
    hog_pids+=($!)
done
echo "stress: $hogs busy processes (pids ${hog_pids[*]}, at most $limit s)," \
     "$runs run(s) of '$suite'; $(nproc) cores"

failed_runs=0
for i in $(seq 1 "$runs"); do
    log=$logs/run-$i.log
    start=$SECONDS
    SECMIG_TESTS_PREPARED=1 bash tools/run-tests.sh "$suite" > "$log" 2>&1
    rc=$?
    # The last "== all runs:" block: the totals line, then FAILED: lines.
    summary=$(sed -n '/^== all runs:$/,$p' "$log" | tail -n +2)
    total=$(printf '%s\n' "$summary" | head -n 1)
    printf 'run %d/%d: %s (%d s, exit %d, log %s)\n' "$i" "$runs" \
        "${total:-no summary}" $((SECONDS - start)) "$rc" "$log"
    printf '%s\n' "$summary" | sed -n 's/^FAILED: //p' >> "$counts"
    [ "$rc" = 0 ] || failed_runs=$((failed_runs + 1))
done

if [ -s "$counts" ]; then
    echo "failed in some run (times, test):"
    sort "$counts" | uniq -c | sort -rn
fi
echo "stress: $((runs - failed_runs)) of $runs run(s) passed"
[ "$failed_runs" = 0 ]
