"""``secmig-migrate`` on real libvirt and QEMU: the driver's path, whole.

The command runs as a process against the lab's two hosts, with its
embedded brokers (clouds lab-a and lab-b, roles from a local file): the
destination tunnel registered at lab-b's broker, a ticket from lab-a's
broker for the user's roles, the grant forwarded from lab-b, tunnels run
inside each host's mount namespace, libvirt migrating through the source
tunnel's UNIX socket, both sides' receipts verified and recorded.

Refusals and failures leave the guest running on the source with its
heartbeat rising, and nothing (tunnel process, socket) on either host.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from tests.functional.lab import base

MIB = base.MIB
# Upper bound of a wait for a migration to be streaming: the command
# starts brokers and tunnels first, slowly on a busy machine.
STREAMING_TIMEOUT = 300


class SecmigMigrateTest(base.LabTestCase):

    def migrate(self, src, dst, name, **kwargs):
        rc, summary, err = self.lab.migrate_cli(src, dst, name, **kwargs)
        self.attach('secmig-migrate-%s-%s-%s' % (name, src.name, dst.name),
                    summary)
        self.attach('secmig-migrate-%s-%s-%s-stderr'
                    % (name, src.name, dst.name), err[-6000:])
        return rc, summary

    def manage(self, *argv):
        return subprocess.run(
            [sys.executable, '-m', 'secmig_nova.cmd.manage'] + list(argv),
            capture_output=True, text=True, timeout=120)

    def assertCompleted(self, rc, summary, src, dst, connections=1):
        self.assertEqual((0, 'completed'), (rc, summary['status']),
                         json.dumps(summary))
        self.assertEqual('lab-%s/lab-%s' % (src.name, src.name),
                         summary['source'])
        self.assertEqual('lab-%s/lab-%s' % (dst.name, dst.name),
                         summary['destination'])
        for side in ('source', 'destination'):
            result = summary['results'][side]
            self.assertEqual(('completed', connections, True),
                             (result['status'],
                              result['verified_connections'],
                              result['recorded']), side)
        self.assertTrue(summary['digests_agree'])
        self.assertEqual(['TLSv1.3 TLS_AES_256_GCM_SHA384'], summary['tls'])
        self.assertGreater(summary['bytes_to_destination'], 10 * MIB)
        self.assertIsNotNone(summary['downtime_ms'])

    def assertReceiptsVerifyOffline(self, summary):
        """The saved receipts verify with the CLI an auditor would use."""
        path = summary['receipts_file']
        cas = []
        for name in ('a', 'b'):
            trust = self.lab.pki.trust(name)
            cas += ['--ca', '%s=%s' % (trust['cloud_id'], trust['ca_file'])]
        proc = self.manage('receipts', 'verify', path, *cas)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
        self.assertIn('%s memory#0: OK' % summary['migration_id'],
                      proc.stdout)
        # ... and fail on a receipts file whose source receipt is another
        # connection's (so the check above can fail).
        with open(path) as f:
            doc = json.load(f)
        conn = doc['connections'][0]
        conn['source_receipt'], conn['destination_receipt'] = \
            conn['destination_receipt'], conn['source_receipt']
        swapped = path + '.swapped'
        with open(swapped, 'w') as f:
            json.dump(doc, f)
        proc = self.manage('receipts', 'verify', swapped, *cas)
        self.assertEqual(1, proc.returncode, proc.stdout)
        self.assertIn('FAILED', proc.stdout)

    def assertRecorded(self, summary, cloud, side, state, receipts=0):
        """The cloud's broker database has the migration's ``side``."""
        url = 'sqlite:///%s' % os.path.join(self.lab.root, 'migrate',
                                            'lab-%s.sqlite' % cloud)
        proc = self.manage('receipts', 'show', summary['migration_id'],
                           '--connection', url)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
        shown = json.loads(proc.stdout)
        self.assertEqual(state, shown['records'][side]['state'],
                         proc.stdout[-3000:])
        self.assertEqual(receipts, len(shown['receipts']))

    # -- tests ---------------------------------------------------------------

    def test_there_and_back(self):
        a, b = self.a, self.b
        self.boot(a, 'cli')
        mark = self.mark(b, 'cli')
        rc, there = self.migrate(a, b, 'cli')
        self.assertCompleted(rc, there, a, b)
        self.assertRunsOn('cli', b, a)
        self.assertContinued('cli', a, b, mark)
        self.assertReceiptsVerifyOffline(there)
        # Each broker holds both receipts of the connection.
        self.assertRecorded(there, 'a', 'source', 'completed', receipts=2)
        self.assertRecorded(there, 'b', 'destination', 'completed',
                            receipts=2)
        self.assertNoTunnelLeft()

        # Back with QEMU's multifd: the main channel and two data channels,
        # each its own TLS connection with its own pair of receipts.
        mark = self.mark(a, 'cli')
        rc, back = self.migrate(b, a, 'cli', parallel_connections=2)
        self.assertCompleted(rc, back, b, a, connections=3)
        self.assertEqual({'memory': 3}, back['streams'])
        self.assertRunsOn('cli', a, b)
        self.assertContinued('cli', b, a, mark)
        self.assertNotEqual(there['migration_id'], back['migration_id'])
        self.assertNoTunnelLeft()

    def test_refused_without_the_cross_cloud_role(self):
        """lab-a's broker refuses; nothing starts on a, the guest stays."""
        a, b = self.a, self.b
        self.boot(a, 'norole')
        mark = self.mark(b, 'norole')
        roles = {'operator': {'lab': ['migration_operator']}}
        rc, summary = self.migrate(a, b, 'norole', roles=roles)
        self.assertEqual((1, 'refused', 'source', 'missing_role'),
                         (rc, summary['status'], summary['side'],
                          summary['reason']), json.dumps(summary))
        self.assertTrue(summary['domain_running_on_source'])
        self.assertStillOnSource('norole', a, b, mark)
        self.assertNoTunnelLeft()
        self.assertRecorded(summary, 'b', 'destination', 'aborted')

    def test_source_tunnel_killed_mid_stream(self):
        """The source tunnel dies: libvirt fails, the guest stays on a.

        The destination QEMU's listening socket, which QEMU leaves behind
        on a failed incoming migration, is removed on b by the command.
        """
        a, b = self.a, self.b
        self.boot(a, 'cli-kill')
        mark = self.mark(b, 'cli-kill')
        killed = []
        done = threading.Event()

        def kill_when_streaming():
            deadline = time.monotonic() + STREAMING_TIMEOUT
            while time.monotonic() < deadline and not killed and \
                    not done.is_set():
                dom = a.domain('cli-kill')
                try:
                    stats = dom.jobStats() if dom is not None else {}
                except Exception:  # noqa: the job may not have started
                    stats = {}
                if (stats.get('data_processed') or 0) > 8 * MIB:
                    for pid in a.tunnel_pids():
                        os.kill(pid, 9)
                        killed.append(pid)
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_streaming, daemon=True)
        killer.start()
        try:
            rc, summary = self.migrate(a, b, 'cli-kill', bandwidth=16)
        finally:
            done.set()
        killer.join(30)
        self.assertTrue(killed, 'the source tunnel was never killed')
        self.assertEqual((1, 'failed'), (rc, summary['status']),
                         json.dumps(summary))
        self.assertTrue(summary['domain_running_on_source'])
        # The destination tunnel fails on its peer's end if it sees it
        # before the command, told by libvirt that the migration failed,
        # stops it (SIGTERM: aborted); which comes first is a race. Either
        # way it did not complete, and says so at its broker.
        dst = summary['results']['destination']
        self.assertIn(dst['status'], ('failed', 'aborted'),
                      json.dumps(summary))
        self.assertTrue(dst['recorded'], json.dumps(summary))
        self.assertStillOnSource('cli-kill', a, b, mark)
        self.assertNoTunnelLeft()

    def test_interrupted_mid_stream(self):
        """SIGTERM to the command mid-stream: the guest stays on a.

        The command aborts libvirt's job, waits for it, stops both tunnels
        and records the end at both brokers.
        """
        a, b = self.a, self.b
        self.boot(a, 'cli-int')
        mark = self.mark(b, 'cli-int')
        conf = self.lab.migrate_conf(a, b, bandwidth=16)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'secmig_nova.cmd.migrate',
             '--config-file', conf, '--json', 'cli-int'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.lab.env)
        self.addCleanup(proc.kill)
        deadline = time.monotonic() + STREAMING_TIMEOUT
        sent = 0
        while time.monotonic() < deadline and proc.poll() is None:
            dom = a.domain('cli-int')
            try:
                sent = (dom.jobStats() or {}).get('data_processed') or 0
            except Exception:  # noqa: the job may not have started
                sent = 0
            if sent > 8 * MIB:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        self.assertGreater(sent, 8 * MIB, 'the migration never streamed')
        out, err = proc.communicate(timeout=120)
        self.attach('secmig-migrate-interrupted-stderr', err[-6000:])
        summary = json.loads(out.strip().splitlines()[-1])
        self.attach('secmig-migrate-interrupted', summary)
        self.assertEqual((1, 'interrupted'),
                         (proc.returncode, summary['status']))
        self.assertTrue(summary['domain_running_on_source'])
        for side in ('source', 'destination'):
            self.assertIn(summary['results'][side]['status'],
                          ('aborted', 'failed'), side)
            self.assertTrue(summary['results'][side]['recorded'], side)
        self.assertStillOnSource('cli-int', a, b, mark)
        self.assertNoTunnelLeft()

    def test_bad_configuration_exits_2(self):
        a, b = self.a, self.b
        conf = self.lab.migrate_conf(a, b, path=os.path.join(
            self.lab.root, 'broken.conf'))
        with open(conf) as f:
            text = f.read()
        bcert, bkey = self.lab.pki.broker_files('b')
        hcert, hkey = self.lab.pki.host_files('b')
        with open(conf, 'w') as f:
            # b's host certificate and key where its broker's belong.
            f.write(text.replace(bcert, hcert).replace(bkey, hkey))
        rc, summary = self.migrate(a, b, 'nonexistent', conf=conf)
        self.assertEqual((2, 'error'), (rc, summary['status']))
        self.assertIn('embedded broker: broker certificate %s of cloud '
                      'lab-b' % hcert, summary['message'])
        self.assertNoTunnelLeft()
