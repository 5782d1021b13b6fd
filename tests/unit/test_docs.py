"""The documentation builds without a warning (``tox -e docs``)."""

import os
import subprocess
import sys
import tempfile

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class TestDocs(testtools.TestCase):

    def test_docs_build_without_warnings(self):
        with tempfile.TemporaryDirectory() as out:
            proc = subprocess.run(
                [sys.executable, '-m', 'sphinx', '-q', '-W', '-E', '-b',
                 'html', '-d', os.path.join(out, 'doctrees'),
                 os.path.join(ROOT, 'doc', 'source'),
                 os.path.join(out, 'html')],
                capture_output=True, text=True, timeout=300)
            self.assertEqual(0, proc.returncode,
                             proc.stdout[-3000:] + proc.stderr[-3000:])
            self.assertTrue(os.path.exists(os.path.join(
                out, 'html', 'admin', 'secmig-migrate.html')))
