"""``secmig-nova-manage ca``: the console script end to end."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import testtools

from secmig_nova.trust import certs
from secmig_nova.trust import store


def manage(*args):
    return subprocess.run(
        [sys.executable, '-m', 'secmig_nova.cmd.manage'] + list(args),
        capture_output=True, text=True, timeout=60)


class TestCaCommands(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix='smca-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.ca = os.path.join(self.dir, 'ca')
        res = manage('ca', 'init', '--dir', self.ca, '--cloud-id', 'lab')
        self.assertEqual(0, res.returncode, res.stderr)

    def _mode(self, path):
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_init_issue_and_verify(self):
        self.assertEqual(0o600, self._mode(os.path.join(self.ca, 'ca.key')))
        out = os.path.join(self.dir, 'hosts')
        res = manage('ca', 'issue', 'host', 'compute-1', '--dir', self.ca,
                     '--out', out)
        self.assertEqual(0, res.returncode, res.stderr)
        cert_file = os.path.join(out, 'compute-1.crt')
        self.assertEqual(0o600, self._mode(os.path.join(out,
                                                        'compute-1.key')))
        self.assertIn(certs.fingerprint(certs.load_pem_chain(cert_file)[0]),
                      res.stdout)
        trust = store.TrustStore.load('lab', os.path.join(self.ca, 'ca.crt'),
                                      os.path.join(self.ca, 'ca.crl'))
        peer = trust.verify(certs.load_pem_chain(cert_file), 'server',
                            role='host')
        self.assertEqual('urn:secmig:lab:host:compute-1', peer.identity.urn)

    def test_broker_certificate(self):
        res = manage('ca', 'issue', 'broker', 'broker', '--dir', self.ca)
        self.assertEqual(0, res.returncode, res.stderr)
        self.assertIn('urn:secmig:lab:broker:broker', res.stdout)

    def test_init_refuses_to_overwrite(self):
        res = manage('ca', 'init', '--dir', self.ca, '--cloud-id', 'lab')
        self.assertEqual(1, res.returncode)
        self.assertIn('already exists', res.stderr)

    def test_revoked_certificate_fails_show(self):
        manage('ca', 'issue', 'host', 'h1', '--dir', self.ca)
        cert_file = os.path.join(self.ca, 'h1.crt')
        show = ('ca', 'show', cert_file, '--ca-file',
                os.path.join(self.ca, 'ca.crt'), '--crl-file',
                os.path.join(self.ca, 'ca.crl'))
        self.assertEqual(0, manage(*show).returncode)
        self.assertEqual(0, manage('ca', 'revoke', cert_file, '--dir',
                                   self.ca).returncode)
        res = manage(*show)
        self.assertEqual(1, res.returncode)
        self.assertIn('certificate_revoked', res.stderr)

    def test_invalid_name_refused(self):
        res = manage('ca', 'issue', 'host', 'bad/name', '--dir', self.ca)
        self.assertEqual(1, res.returncode)
        self.assertIn('invalid secmig identity', res.stderr)
