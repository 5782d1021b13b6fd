#!/usr/bin/env python3
"""Print "N passed, N failed, N skipped" for the last stestr run.

Exits non-zero when the run failed, had no test, or skipped a test: a
skipped test is never counted as passing (a component that cannot start
must fail the test with the reason, not skip it).
"""

import io
import subprocess
import sys

import subunit
import testtools


def main():
    stream = subprocess.run(
        [sys.executable, '-m', 'stestr', 'last', '--subunit'],
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
    passed = summary.testsRun - failed - skipped
    for test, _reason in summary.skipped:
        print('SKIPPED (counts as a failure here): %s' % test.id())
    print('%d passed, %d failed, %d skipped' % (passed, failed, skipped))
    return 0 if passed and not failed and not skipped else 1


if __name__ == '__main__':
    sys.exit(main())
