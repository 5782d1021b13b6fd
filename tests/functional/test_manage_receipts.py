"""``secmig-nova-manage receipts verify`` on receipts from real tunnels."""

import json
import os
import subprocess
import sys

from secmig_nova.authz import tokens
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import migration
from secmig_nova.broker.db import models
from tests.functional import tunnel_harness as harness


def manage(*args):
    return subprocess.run(
        [sys.executable, '-m', 'secmig_nova.cmd.manage'] + list(args),
        capture_output=True, text=True, timeout=60)


class TestReceiptsVerify(harness.TunnelTestCase):

    def setUp(self):
        super().setUp()
        streams = {'memory': 2}
        dst, src, _ = self.start_pair(
            grant_kwargs={'streams': streams},
            dst={'expect_connections': streams},
            src={'expect_connections': streams})
        qemu = harness.FakeDestinationQemu(self.dst_qemu_sock, b'rp', 2)
        self.addCleanup(qemu.close)
        for _ in range(2):
            harness.FakeSourceQemu(self.src_sock, os.urandom(300000)).wait()
        self.outcome = self.assertCompleted(src)
        self.assertCompleted(dst)
        self.cas = ['--ca', 'cloud-a=%s' % self.pki.a.ca.ca_file,
                    '--ca', 'cloud-b=%s' % self.pki.b.ca.ca_file]

    def _file(self, doc):
        path = os.path.join(self.dir, 'receipts.json')
        with open(path, 'w') as f:
            json.dump(doc, f)
        return path

    def test_outcome_verifies(self):
        res = manage('receipts', 'verify', self._file(self.outcome),
                     *self.cas)
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)
        self.assertEqual(2, res.stdout.count(': OK'))
        self.assertNotIn('FAILED', res.stdout)

    def test_tampered_receipt_fails_and_names_the_check(self):
        conn = dict(self.outcome['connections'][0])
        head, body, sig = conn['destination_receipt'].split('.')
        sig = sig[:-4] + ('AAAA' if sig[-4:] != 'AAAA' else 'BBBB')
        conn['destination_receipt'] = '.'.join((head, body, sig))
        res = manage('receipts', 'verify', self._file([conn]), *self.cas)
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] destination_signature', res.stdout)
        self.assertIn('[ok] source_signature', res.stdout)

    def test_receipts_of_different_connections_do_not_pair(self):
        c0, c1 = self.outcome['connections']
        mixed = {'source_receipt': c0['source_receipt'],
                 'destination_receipt': c1['destination_receipt']}
        res = manage('receipts', 'verify', self._file([mixed]), *self.cas)
        self.assertEqual(1, res.returncode)
        self.assertIn('[FAILED] same_claims', res.stdout)
        self.assertIn('[FAILED] destination_references_source', res.stdout)

    def test_without_the_peer_cloud_ca_nothing_verifies(self):
        res = manage('receipts', 'verify', self._file(self.outcome),
                     '--ca', 'cloud-a=%s' % self.pki.a.ca.ca_file)
        self.assertEqual(1, res.returncode)
        self.assertIn("no CA bundle for cloud cloud-b", res.stdout)

    def test_by_migration_id_from_the_broker_database(self):
        url = 'sqlite:///%s' % os.path.join(self.dir, 'broker.sqlite')
        migration.sync(url)
        db = db_api.Database(url)
        self.addCleanup(db.dispose)
        db.create_migration('mig-1', 'source', models.AUTHORIZED)
        for conn in self.outcome['connections']:
            for role in ('source', 'destination'):
                token = conn['%s_receipt' % role]
                db.add_receipt('mig-1', role, conn['kind'], conn['index'],
                               'test', token, tokens.token_digest(token))
        res = manage('receipts', 'verify', 'mig-1', '--connection', url,
                     *self.cas)
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)
        self.assertEqual(2, res.stdout.count(': OK'))
        res = manage('receipts', 'show', 'mig-1', '--connection', url)
        self.assertEqual(0, res.returncode, res.stderr)
        self.assertEqual(4, len(json.loads(res.stdout)['receipts']))
