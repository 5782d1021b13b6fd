"""Spare tunnel processes (``secmig-tunnel --spare``, SpareTunnels).

Real tunnel processes with the test PKI: a spare loads everything first
and reads its parameters late, serves one migration like any other tunnel,
refuses parameters it was not pinned for, and exits quietly when never
used.
"""

import os
import signal

from secmig_nova.tunnel import process
from tests.functional import tunnel_harness as harness

TIMEOUT = harness.TIMEOUT


class TestSpareTunnels(harness.TunnelTestCase):

    def spares(self):
        spares = process.SpareTunnels()
        self.addCleanup(spares.close)
        return spares

    def wait_spare(self, spares):
        """The spare process, once it has loaded everything."""
        spare = spares._spare
        self.assertIsNotNone(spare)
        self.assertTrue(spares.wait_loaded(TIMEOUT), spare.stderr)
        self.assertIsNotNone(spare.spare)
        self.procs.append(spare)
        return spare

    def test_migration_through_spares_on_both_sides(self):
        dst_spares, src_spares = self.spares(), self.spares()
        dst_spares.prepare()
        src_spares.prepare()
        dst_spare = self.wait_spare(dst_spares)
        src_spare = self.wait_spare(src_spares)

        dst = dst_spares(self.dst_params())
        self.assertIs(dst_spare, dst)
        endpoint = dst.wait_ready(TIMEOUT)['endpoint']
        src = src_spares(self.src_params(self.pki.grant(endpoint)))
        self.assertIs(src_spare, src)
        src.wait_ready(TIMEOUT)
        self.assertEqual(dst.pid, dst.ready['pid'])
        self.assertEqual(src.pid, src.ready['pid'])

        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        payload = os.urandom(3 * 1024 * 1024 + 3)
        harness.FakeSourceQemu(self.src_sock, payload).wait()
        out = self.assertCompleted(src)
        self.assertCompleted(dst)
        conn = out['connections'][0]
        self.assertEqual(('TLSv1.3', 'TLS_AES_256_GCM_SHA384'),
                         (conn['tls_version'], conn['tls_cipher']))
        self.assertEqual(len(payload), conn['src_to_dst']['bytes'])
        self.assertEqual((1, 0), (src_spares.used, src_spares.fresh))
        self.assertNoSocketLeft()

        # One process, one migration: the used one is never handed out
        # again; the next spare is another process.
        self.assertIsNone(src_spares._spare)
        src_spares.replenish()
        self.assertNotEqual(src.pid, self.wait_spare(src_spares).pid)

    def test_other_cipher_gets_a_fresh_process(self):
        spares = self.spares()
        spares.prepare()
        spare = self.wait_spare(spares)
        dst = spares(self.dst_params(tls_cipher='aes-128-gcm'))
        self.procs.append(dst)
        self.assertIsNot(spare, dst)
        self.assertEqual((0, 1), (spares.used, spares.fresh))
        dst.wait_ready(TIMEOUT)
        # The unused spare was ended, quietly.
        self.assertEqual(0, spare.proc.wait(TIMEOUT))
        self.assertIsNone(spare.outcome)

    def loaded_spare(self):
        spare = process.TunnelProcess(None)
        self.procs.append(spare)
        self.assertTrue(spare.wait_spare(TIMEOUT), spare.stderr)
        return spare

    def test_spare_refuses_parameters_it_was_not_pinned_for(self):
        spare = self.loaded_spare()
        spare.start(self.dst_params(ecdh_curve='secp384r1'))
        rc, outcome = spare.wait(TIMEOUT)
        self.assertEqual(2, rc)
        self.assertEqual(('refused', 'config_invalid'),
                         (outcome['status'], outcome['reason']))
        self.assertIn('pinned to ecdh_curve prime256v1', outcome['message'])
        self.assertIsNone(spare.ready)

    def test_unused_spare_exits_quietly(self):
        spare = self.loaded_spare()
        rc, outcome = spare.close_spare(TIMEOUT)
        self.assertEqual(0, rc)
        self.assertIsNone(outcome)
        self.assertNotIn('ERROR', spare.stderr)

    def test_dead_spare_is_replaced_by_a_fresh_process(self):
        spares = self.spares()
        spares.prepare()
        spare = self.wait_spare(spares)
        os.kill(spare.pid, signal.SIGKILL)
        spare.proc.wait(TIMEOUT)
        dst = spares(self.dst_params())
        self.procs.append(dst)
        self.assertIsNot(spare, dst)
        self.assertEqual((0, 1), (spares.used, spares.fresh))
        self.assertIn('endpoint', dst.wait_ready(TIMEOUT))
