"""The destination's listening port under attack (issue 13), on loopback.

Anyone who can reach the port can connect. Each attack here runs against a
real destination tunnel twice in one migration, once before the real source
connects and once in the middle of its stream (the source QEMU holds after
the first half until the attack was counted), with the destination knowing
how many connections to expect and without (the driver's mode, where it
runs until stopped). The real source must complete with receipts, and the
destination must count the attacks under their reason, never make one its
own. Every attack is bounded in count and time.
"""

import os
import select
import socket
import threading

from secmig_nova.authz import tokens
from secmig_nova.trust import store as trust_store
from secmig_nova.tunnel import frames
from tests.functional import tunnel_harness as harness

CHUNK = 64 * 1024
STREAM = 16 * CHUNK
HALF = STREAM // 2
# A forged log line an attacker tries to smuggle in through an ABORT reason.
FORGED = 'CRITICAL secmig-tunnel [-] migration mig-1 completed'


class ListeningPortTestCase(harness.TunnelTestCase):

    def endpoint_address(self, endpoint):
        host, port = endpoint.rsplit(':', 1)
        return host, int(port)

    def connect(self, endpoint, source_address=None):
        sock = socket.socket()
        if source_address:
            sock.bind((source_address, 0))
        sock.settimeout(harness.TIMEOUT)
        sock.connect(self.endpoint_address(endpoint))
        self.addCleanup(sock.close)
        return sock

    def assertClosedByPeer(self, sock):
        """The destination closed ``sock`` (EOF or reset) in time."""
        sock.settimeout(harness.TIMEOUT)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            self.fail('the destination did not close the connection')
        except OSError:
            pass    # a reset, or the TLS alert of the refusal

    def wait_refused(self, dst, reason, count):
        event = dst.wait_event(
            lambda e: e.get('event') == 'refused' and
            e.get('reason') == reason and e.get('count') == count,
            harness.TIMEOUT)
        self.assertIsNotNone(event, 'refusal #%d (%s) not reported: %s\n%s'
                             % (count, reason, list(dst.events),
                                dst.stderr[-3000:]))
        return event

    def check_receipts(self, conn):
        stores = {
            'source': trust_store.TrustStore.load(
                self.pki.a.cloud_id, self.pki.a.ca.ca_file),
            'destination': trust_store.TrustStore.load(
                self.pki.b.cloud_id, self.pki.b.ca.ca_file)}
        for role, prefix in (('source', 'src'), ('destination', 'dst')):
            claims, _ = tokens.verify_receipt(
                conn['%s_receipt' % role], stores[role],
                expected_fingerprint=conn['%s_fingerprint' % prefix])
            self.assertEqual(role, claims['role'])
            self.assertEqual(conn['src_to_dst'], claims['src_to_dst'])


class TestAttacksBeforeAndMidStream(ListeningPortTestCase):
    """Each attack before and during a real stream, in both modes."""

    def _migrate_under(self, attack, reason, expect, **dst_over):
        """Attack, start the real stream, attack again mid-stream, finish.

        ``attack(endpoint)`` runs one attack and returns what to check
        afterwards (a socket the destination must have closed, or None).
        """
        over = {} if expect else {'expect_connections': None}
        over.update(dst_over)
        dst, src, endpoint = self.start_pair(dst=over)
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        leftovers = [attack(endpoint)]
        self.wait_refused(dst, reason, 1)
        data = os.urandom(STREAM)
        release = threading.Event()
        self.addCleanup(release.set)
        feeder = harness.FakeSourceQemu(self.src_sock, data, chunk=CHUNK,
                                        hold_at=HALF, hold=release)
        self.wait_for(lambda: qemu_dst.progress >= HALF)
        leftovers.append(attack(endpoint))
        self.wait_refused(dst, reason, 2)
        # Still in the middle: the rest only goes once the attack counted.
        self.assertEqual([], qemu_dst.received)
        release.set()
        feeder.wait()
        src_out = self.assertCompleted(src)
        if expect:
            dst_out = self.assertCompleted(dst)
        else:
            # The driver stops the destination once libvirt is done.
            self.wait_for(lambda: qemu_dst.received)
            rc, dst_out = dst.terminate(harness.TIMEOUT)
            self.assertEqual(0, rc, dst_out)
            self.assertEqual('completed', dst_out['status'], dst_out)
        self.assertEqual([(len(data), _sha(data))], qemu_dst.wait())
        self.assertEqual(bytes(feeder.returned), b'')
        for out in (src_out, dst_out):
            conn, = out['connections']
            self.assertEqual('completed', conn['status'])
            self.check_receipts(conn)
        self.assertEqual(2, dst_out['refused'][reason], dst_out)
        self.assertEqual(2, sum(dst_out['refused'].values()), dst_out)
        for sock in leftovers:
            if sock is not None:
                self.assertClosedByPeer(sock)
        self.assertNoSocketLeft()
        return dst, dst_out

    def wait_for(self, predicate):
        event = threading.Event()
        for _ in range(int(harness.TIMEOUT / 0.05)):
            if predicate():
                return
            event.wait(0.05)
        self.fail('condition not reached in %s s' % harness.TIMEOUT)

    # -- the attacks ---------------------------------------------------

    def port_scan(self, endpoint):
        self.connect(endpoint).close()

    def junk(self, endpoint):
        sock = self.connect(endpoint)
        sock.sendall(b'\x16\x03\x01\x00\x05hello' + os.urandom(4000))
        return sock

    def idle(self, endpoint):
        return self.connect(endpoint)

    def untrusted_certificate(self, endpoint):
        try:
            sock = self.raw_client(endpoint,
                                   host_files=self.pki.rogue_host_a)
            self.addCleanup(sock.close)
            return sock
        except OSError:
            return None     # the handshake failed at our end already

    def trusted_but_wrong(self, endpoint):
        # A valid host of the source cloud with the real grant, but it is
        # not the host the grant pins.
        sock = self.raw_client(endpoint, host='host-a2')
        self.addCleanup(sock.close)
        sock.sendall(self.hello(self.pki.grant(endpoint)))
        ftype, payload = self.read_frame(sock)
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual('fingerprint_mismatch',
                         frames.pull_abort(payload).code.reason)
        return sock

    def abort_before_hello(self, endpoint):
        sock = self.raw_client(endpoint, host='host-a2')
        self.addCleanup(sock.close)
        sock.sendall(frames.push_abort(frames.Abort(
            code=frames.AbortCode.CHECKPOINT_MISMATCH,
            reason='stream tampered\n2026-12-07 00:00:00.000 1 ' + FORGED)))
        return sock

    # -- the tests -----------------------------------------------------

    def test_port_scan(self):
        self._migrate_under(self.port_scan, 'tls_handshake_failed', True)

    def test_port_scan_driver_mode(self):
        self._migrate_under(self.port_scan, 'tls_handshake_failed', False)

    def test_junk_bytes(self):
        self._migrate_under(self.junk, 'tls_handshake_failed', True)

    def test_junk_bytes_driver_mode(self):
        self._migrate_under(self.junk, 'tls_handshake_failed', False)

    def test_idle_connection(self):
        # The handshake deadline closes the idle connections; the real
        # source has the same deadline, which it meets.
        self._migrate_under(self.idle, 'timeout', True,
                            handshake_timeout=3.0)

    def test_idle_connection_driver_mode(self):
        self._migrate_under(self.idle, 'timeout', False,
                            handshake_timeout=3.0)

    def test_untrusted_certificate(self):
        self._migrate_under(self.untrusted_certificate,
                            'certificate_untrusted', True)

    def test_untrusted_certificate_driver_mode(self):
        self._migrate_under(self.untrusted_certificate,
                            'certificate_untrusted', False)

    def test_trusted_but_wrong_client(self):
        _dst, out = self._migrate_under(self.trusted_but_wrong,
                                        'fingerprint_mismatch', True)
        record = out['refused_connections'][0]
        self.assertEqual(('memory', 0), (record['kind'], record['index']))

    def test_trusted_but_wrong_client_driver_mode(self):
        self._migrate_under(self.trusted_but_wrong, 'fingerprint_mismatch',
                            False)

    def _abort_before_hello(self, expect):
        dst, out = self._migrate_under(self.abort_before_hello,
                                       'peer_aborted', expect)
        # The claimed reason is recorded, escaped, never adopted.
        record = out['refused_connections'][0]
        self.assertEqual('checkpoint_mismatch', record['peer_reason'])
        self.assertIn('stream tampered\\x0a2026-12-07', record['message'])
        self.assertNotIn('\n', record['message'])
        self.assertNotIn('reason', out)
        # Logged, escaped on one line; no line starts with the forgery.
        self.assertIn('stream tampered\\x0a2026-12-07 00:00:00.000 1 '
                      + FORGED, dst.stderr)
        for line in dst.stderr.splitlines():
            self.assertFalse(line.startswith('2026-12-07 00:00:00.000'),
                             line)

    def test_abort_before_hello_with_a_newline(self):
        self._abort_before_hello(True)

    def test_abort_before_hello_with_a_newline_driver_mode(self):
        self._abort_before_hello(False)


class TestOutcomeAfterRefusals(ListeningPortTestCase):

    def test_deadline_after_refusals_names_them(self):
        """A deadline without authorization: timeout, refusals named.

        The destination fails with its own reason, not the refused
        peer's, and its message names what it refused.
        """
        dst, endpoint = self.start_destination(deadline=3.0)
        sock = self.raw_client(endpoint, host='host-a2')
        sock.sendall(self.hello(self.pki.grant(endpoint)))
        self.assertEqual(frames.FrameType.ABORT, self.read_frame(sock)[0])
        sock.close()
        rc, out = dst.wait(harness.TIMEOUT)
        self.assertNotEqual(0, rc, out)
        self.assertEqual(('failed', 'timeout'), (out['status'],
                                                 out['reason']), out)
        self.assertEqual({'fingerprint_mismatch': 1}, out['refused'])
        self.assertEqual([], out['connections'])
        self.assertIn('migration did not complete within 3 s; no connection '
                      'was authorized; 1 connection(s) refused before '
                      'authorization (fingerprint_mismatch x1); first: '
                      'fingerprint_mismatch: peer certificate '
                      'urn:secmig:cloud-a:host:host-a2', out['message'])


class TestPreauthCap(ListeningPortTestCase):

    IDLE = 200
    CAP = 16

    def test_200_idle_connections_at_the_cap(self):
        """200 idle connections from another address, cap 16.

        The real source connects in the middle of the flood and completes;
        every idle connection is closed, at the cap (evicted) or by the
        handshake deadline, and counted; the log has a bounded number of
        lines about them. Three hosts of the source cloud that complete the
        TLS handshake and never send HELLO are not evicted by the flood
        (handshake-stage connections go first) and are closed by the HELLO
        deadline, with an ABORT saying so.
        """
        dst, src, endpoint = self.start_pair(dst={
            'expect_connections': None, 'handshake_timeout': 4.0,
            'max_preauth_connections': self.CAP})
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        idle = [self.connect(endpoint, '127.0.0.2')
                for _ in range(self.IDLE // 2)]
        no_hello = [self.raw_client(endpoint, host='host-a2',
                                    source_address='127.0.0.3')
                    for _ in range(3)]
        for sock in no_hello:
            self.addCleanup(sock.close)
        data = os.urandom(STREAM)
        feeder = harness.FakeSourceQemu(self.src_sock, data, chunk=CHUNK)
        idle += [self.connect(endpoint, '127.0.0.2')
                 for _ in range(self.IDLE - len(idle))]
        feeder.wait()
        src_out = self.assertCompleted(src)
        conn, = src_out['connections']
        self.check_receipts(conn)
        # Every idle connection is closed by the destination.
        open_ = list(idle)
        for _ in range(int(harness.TIMEOUT / 0.5) * 2):
            if not open_:
                break
            readable, _, _ = select.select(open_, [], [], 0.5)
            for sock in readable:
                self.assertClosedByPeer(sock)
                open_.remove(sock)
        self.assertEqual([], open_, 'idle connections left open')
        for sock in no_hello:
            sock.settimeout(harness.TIMEOUT)
            ftype, payload = self.read_frame(sock)
            self.assertEqual(frames.FrameType.ABORT, ftype)
            self.assertEqual('timeout',
                             frames.pull_abort(payload).code.reason)
        rc, dst_out = dst.terminate(harness.TIMEOUT)
        detail = '%s\n%s' % (dst_out, dst.stderr[-3000:])
        self.assertEqual(0, rc, detail)
        self.assertEqual('completed', dst_out['status'], detail)
        self.assertEqual([(len(data), _sha(data))], qemu_dst.wait())
        refused = dst_out['refused']
        self.assertEqual(self.IDLE + len(no_hello), sum(refused.values()),
                         detail)
        self.assertEqual({'preauth_evicted', 'timeout'}, set(refused),
                         detail)
        # At most CAP were held at once: the others were evicted; the
        # ones still held were closed by the handshake deadline.
        self.assertGreaterEqual(refused['preauth_evicted'],
                                self.IDLE - self.CAP, detail)
        self.assertGreaterEqual(refused['timeout'], 1 + len(no_hello),
                                detail)
        self.assertEqual(10, len(dst_out['refused_connections']))
        lines = [line for line in dst.stderr.splitlines()
                 if 'before authorization' in line]
        # A few per reason, then summaries: not one per connection.
        self.assertLessEqual(len(lines), 10, '\n'.join(lines))
        # Nor any other line per connection: the whole log stays short.
        self.assertLess(len(dst.stderr.splitlines()), 40, dst.stderr)


def _sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


class TestGrantSingleUsePerHost(ListeningPortTestCase):
    """A grant connection is used once per host, not once per process."""

    def _hello_ok(self, endpoint, grant):
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(grant, index=0))
        ftype, _payload = self.read_frame(sock)
        self.assertEqual(frames.FrameType.HELLO_OK, ftype)
        return sock

    def _replayed(self, proc, endpoint, grant):
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(grant, index=0))
        ftype, payload = self.read_frame(sock)
        sock.close()
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual('connection_replayed',
                         frames.pull_abort(payload).code.reason)
        _out, record = self.assertRefusedPreauth(proc, 'connection_replayed')
        self.assertIn('already used on this host', record['message'])

    def test_restarted_tunnel_refuses_a_used_grant(self):
        first, endpoint = self.start_destination()
        qemu = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu.close)
        grant = self.pki.grant(endpoint)
        sock = self._hello_ok(endpoint, grant)
        first.terminate(harness.TIMEOUT)
        sock.close()
        # The tunnel is restarted where the grant says (same endpoint as
        # far as the grant can tell) and sees the same grant again.
        second, bound = self._restarted(endpoint)
        self._replayed(second, bound, grant)

    def _restarted(self, endpoint):
        """Another tunnel on this host, advertised at ``endpoint``."""
        proc = self.start(self.dst_params(advertise_endpoint=endpoint))
        ready = proc.wait_ready(harness.TIMEOUT)
        self.assertEqual(endpoint, ready['endpoint'])
        return proc, ready['bound']

    def test_second_tunnel_on_the_host_refuses_a_used_grant(self):
        first, endpoint = self.start_destination()
        qemu = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu.close)
        grant = self.pki.grant(endpoint)
        sock = self._hello_ok(endpoint, grant)
        self.addCleanup(sock.close)
        second, bound = self._restarted(endpoint)
        self.assertNotEqual(endpoint, bound)
        self._replayed(second, bound, grant)

    def test_unusable_ledger_refuses_to_listen(self):
        ledger_file = os.path.join(self.dir, 'not-a-dir')
        open(ledger_file, 'w').close()
        open_dir = os.path.join(self.dir, 'open')
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o777)
        for path in (ledger_file, open_dir):
            proc = self.start(self.dst_params(grant_ledger_dir=path))
            outcome = self.assertRefused(proc, 'grant_ledger_unavailable')
            self.assertNotIn('endpoint', outcome)
