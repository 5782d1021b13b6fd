#!/usr/bin/env python3
"""Print "N passed, N failed, N skipped" for the last stestr run.

Exits non-zero when the run failed, had no test, or skipped a test: a
skipped test is never counted as passing (a component that cannot start
must fail the test with the reason, not skip it).

    test_summary.py [--add-to FILE]     # also add the counts to FILE
                    [--repo-url URL]    # that stestr repository's last run
    test_summary.py --total FILE        # print the sum of FILE's counts,
                                        # then "FAILED: <test id>" lines

Run from the directory holding the stestr repository (.stestr).
"""

import argparse
import io
import json
import os
import subprocess
import sys

import subunit
import testtools


def last_run(repo_url=None):
    stestr = [sys.executable, '-m', 'stestr']
    if repo_url:
        stestr += ['--repo-url', repo_url]
    stream = subprocess.run(stestr + ['last', '--subunit'],
                            capture_output=True, check=True).stdout
    case = subunit.ByteStreamToStreamResult(io.BytesIO(stream),
                                            non_subunit_name='stdout')
    summary = testtools.StreamSummary()
    tags = testtools.StreamTagger([summary], add=[], discard=[])
    tags.startTestRun()
    case.run(tags)
    tags.stopTestRun()
    failed = len(summary.errors) + len(summary.failures)
    skipped = len(summary.skipped)
    for test, _reason in summary.skipped:
        print('SKIPPED (counts as a failure here): %s' % test.id())
    return {'passed': summary.testsRun - failed - skipped,
            'failed': failed, 'skipped': skipped,
            'failed_tests': sorted(test.id() for test, _ in
                                   summary.errors + summary.failures +
                                   summary.skipped)}


def line(counts):
    return '%(passed)d passed, %(failed)d failed, %(skipped)d skipped' % (
        counts)


def ok(counts):
    return counts['passed'] > 0 and not counts['failed'] and \
        not counts['skipped']


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--add-to')
    parser.add_argument('--total')
    parser.add_argument('--repo-url', help='the stestr repository (default: '
                        'the one of the current directory)')
    args = parser.parse_args()
    if args.total:
        total = {'passed': 0, 'failed': 0, 'skipped': 0, 'runs': 0}
        failed_tests = []
        if os.path.exists(args.total):
            with open(args.total) as f:
                for raw in f:
                    run = json.loads(raw)
                    for key in ('passed', 'failed', 'skipped'):
                        total[key] += run[key]
                    total['runs'] += 1
                    failed_tests += run.get('failed_tests', [])
        print(line(total))
        for test_id in failed_tests:
            print('FAILED: %s' % test_id)
        return 0 if ok(total) else 1
    counts = last_run(args.repo_url)
    print(line(counts))
    if args.add_to:
        with open(args.add_to, 'a') as f:
            f.write(json.dumps(counts) + '\n')
    return 0 if ok(counts) else 1


if __name__ == '__main__':
    sys.exit(main())
