"""The tunnel end to end: real secmig-tunnel processes, real TLS 1.3.

Every refusal the tunnel issue lists has its own test here, asserting the
named reason on the side that detects it, a non-zero exit and that no
socket file is left behind. A destination refusing a connection before
authorizing it does not end: its refusal is asserted in the outcome's
``refused`` records once it is stopped (assertRefusedPreauth).
"""

import os
import signal
import socket
import struct
import threading
import time

from secmig_nova.authz import tokens
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import frames
from tests.functional import tunnel_harness as harness


class TestRoundTrip(harness.TunnelTestCase):

    def _round_trip(self, connections, size, reply):
        streams = {'memory': connections}
        dst, src, _ = self.start_pair(
            grant_kwargs={'streams': streams},
            dst={'expect_connections': streams},
            src={'expect_connections': streams})
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock, reply,
                                               connections)
        self.addCleanup(qemu_dst.close)
        payloads = [os.urandom(size) for _ in range(connections)]
        sources = [harness.FakeSourceQemu(self.src_sock, data)
                   for data in payloads]
        for s in sources:
            s.wait()
        src_out = self.assertCompleted(src)
        dst_out = self.assertCompleted(dst)
        received = sorted(qemu_dst.wait())
        expected = sorted((len(p), _sha(p)) for p in payloads)
        self.assertEqual(expected, received)
        for s in sources:
            self.assertIsNone(s.error)
            self.assertEqual(reply, bytes(s.returned))
        self.assertEqual(connections, len(src_out['connections']))
        self.assertEqual(sorted(range(connections)),
                         sorted(c['index'] for c in src_out['connections']))
        for out in (src_out, dst_out):
            for conn in out['connections']:
                self.assertEqual('TLSv1.3', conn['tls_version'])
                self.assertEqual('TLS_AES_256_GCM_SHA384',
                                 conn['tls_cipher'])
                self.assertEqual({'bytes': len(reply), 'sha256': _sha(reply)},
                                 conn['dst_to_src'])
                self.assertIn((conn['src_to_dst']['bytes'],
                               conn['src_to_dst']['sha256']), expected)
                self._check_receipts(conn)
        self.assertNoSocketLeft()
        return src_out, dst_out

    def _check_receipts(self, conn):
        src_claims, _ = tokens.verify_receipt(
            conn['source_receipt'], self.pki.a.ca and _store(self.pki.a),
            expected_fingerprint=conn['src_fingerprint'])
        dst_claims, _ = tokens.verify_receipt(
            conn['destination_receipt'], _store(self.pki.b),
            expected_fingerprint=conn['dst_fingerprint'])
        self.assertEqual('source', src_claims['role'])
        self.assertEqual('destination', dst_claims['role'])
        for name in ('src_to_dst', 'dst_to_src', 'migration_id',
                     'stream_kind', 'connection_index', 'grant_jti'):
            self.assertEqual(src_claims[name], dst_claims[name], name)
        self.assertEqual(conn['src_to_dst'], src_claims['src_to_dst'])
        self.assertEqual(tokens.token_digest(conn['source_receipt']),
                         dst_claims['source_receipt_sha256'])

    def test_one_connection_both_directions(self):
        self._round_trip(1, 5 * 1024 * 1024 + 17, os.urandom(70000))

    def test_four_connections_both_directions(self):
        self._round_trip(4, 3 * 1024 * 1024 + 5, os.urandom(1234))

    def test_empty_stream(self):
        self._round_trip(1, 0, b'')

    def test_memory_and_disk_streams(self):
        disk_src = os.path.join(self.dir, 'disk.sock')
        disk_dst = os.path.join(self.dir, 'diskq.sock')
        streams = {'memory': 1, 'disk': 1}
        dst, src, _ = self.start_pair(
            grant_kwargs={'streams': streams},
            dst={'sockets': {'memory': self.dst_qemu_sock,
                             'disk': disk_dst},
                 'expect_connections': streams},
            src={'sockets': {'memory': self.src_sock, 'disk': disk_src},
                 'expect_connections': streams})
        mem_q = harness.FakeDestinationQemu(self.dst_qemu_sock)
        disk_q = harness.FakeDestinationQemu(disk_dst)
        self.addCleanup(mem_q.close)
        self.addCleanup(disk_q.close)
        mem, disk = os.urandom(300000), os.urandom(500000)
        feeders = [harness.FakeSourceQemu(self.src_sock, mem),
                   harness.FakeSourceQemu(disk_src, disk)]
        for f in feeders:
            f.wait()
        out = self.assertCompleted(src)
        self.assertCompleted(dst)
        self.assertEqual([(len(mem), _sha(mem))], mem_q.wait())
        self.assertEqual([(len(disk), _sha(disk))], disk_q.wait())
        self.assertEqual(['disk', 'memory'],
                         [c['kind'] for c in out['connections']])
        self.assertFalse(os.path.exists(disk_src))

    def test_destination_qemu_socket_appears_late(self):
        # The destination waits up to local_endpoint_timeout for its QEMU's
        # socket: long here, so the socket is late but never too late.
        dst, src, _ = self.start_pair(dst={'local_endpoint_timeout': 60.0},
                                      dst_debug=True)
        data = os.urandom(200000)
        feeder = harness.FakeSourceQemu(self.src_sock, data)
        # The connection reached the destination, which looks for its QEMU
        # once the handshake and HELLO are through; the socket comes later.
        # (The destination logs each accepted connection at debug level.)
        harness.wait_for(lambda: 'connection from' in dst.stderr,
                         'the destination accepted the connection')
        time.sleep(0.7)
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        feeder.wait()
        self.assertCompleted(src)
        self.assertCompleted(dst)
        self.assertEqual([(len(data), _sha(data))], qemu_dst.wait())

    def test_aes_128_by_option(self):
        dst, src, _ = self.start_pair(dst={'tls_cipher': 'aes-128-gcm'},
                                      src={'tls_cipher': 'aes-128-gcm'})
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        harness.FakeSourceQemu(self.src_sock, os.urandom(100000)).wait()
        out = self.assertCompleted(src)
        self.assertCompleted(dst)
        self.assertEqual('TLS_AES_128_GCM_SHA256',
                         out['connections'][0]['tls_cipher'])

    def test_cipher_disagreement_refused(self):
        # The destination pins AES-128 and the source AES-256: they share
        # no suite, so there is no session at all.
        dst, src, _ = self.start_pair(dst={'tls_cipher': 'aes-128-gcm'})
        harness.FakeSourceQemu(self.src_sock, b'x' * 1000).wait()
        self.assertRefused(src, 'tls_handshake_failed')
        self.assertRefusedPreauth(dst, 'tls_handshake_failed')


def _store(cloud):
    from secmig_nova.trust import store
    return store.TrustStore.load(cloud.cloud_id, cloud.ca.ca_file)


def _sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


class TestCertificateRefusals(harness.TunnelTestCase):

    def test_wrong_ca(self):
        # A certificate with host-a's identity from a CA nobody trusts.
        dst, endpoint = self.start_destination()
        try:
            sock = self.raw_client(endpoint,
                                   host_files=self.pki.rogue_host_a)
            sock.settimeout(5)
            self.assertEqual(b'', sock.recv(10))
        except OSError:
            pass
        self.assertRefusedPreauth(dst, 'certificate_untrusted')

    def test_source_refuses_to_start_with_a_foreign_certificate(self):
        files = dict(zip(('cert_file', 'key_file'), self.pki.rogue_host_a))
        proc = self.start(self.src_params(self.pki.grant('127.0.0.1:9'),
                                          **files))
        self.assertRefused(proc, 'config_invalid')
        self.assertNoSocketLeft()

    def test_expired_certificate(self):
        dst, endpoint = self.start_destination()
        self.assertIsNone(self.raw_client_refused(endpoint,
                                                  'host-a-expired'))
        self.assertRefusedPreauth(dst, 'certificate_expired')

    def raw_client_refused(self, endpoint, host):
        try:
            sock = self.raw_client(endpoint, host=host)
            sock.settimeout(5)
            data = sock.recv(10)
            sock.close()
            return data or None
        except OSError:
            return None

    def test_revoked_certificate(self):
        dst, endpoint = self.start_destination(crl=True)
        self.assertIsNone(self.raw_client_refused(endpoint,
                                                  'host-a-revoked'))
        self.assertRefusedPreauth(dst, 'certificate_revoked')

    def test_valid_certificate_wrong_fingerprint_at_destination(self):
        # host-a2 is a valid cloud-a host, but the grant pins host-a.
        dst, endpoint = self.start_destination()
        sock = self.raw_client(endpoint, host='host-a2')
        sock.sendall(self.hello(self.pki.grant(endpoint)))
        ftype, payload = self.read_frame(sock)
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual('fingerprint_mismatch',
                         frames.pull_abort(payload).code.reason)
        sock.close()
        self.assertRefusedPreauth(dst, 'fingerprint_mismatch',
                                  kind='memory', index=0)

    def test_valid_certificate_wrong_fingerprint_at_source(self):
        # The destination presents host-b2, a valid cloud-b host, but the
        # grant pins host-b: the source refuses before sending HELLO.
        dst, src, _ = self.start_pair(dst={'host': 'host-b2'})
        harness.FakeSourceQemu(self.src_sock, os.urandom(1000)).wait()
        self.assertRefused(src, 'fingerprint_mismatch', 'refused')
        self.assertNoSocketLeft()
        # The source's ABORT names its reason, but before HELLO the
        # destination cannot tell the real source from anyone with a
        # certificate of cloud a: counted, the claimed reason recorded.
        _out, record = self.assertRefusedPreauth(
            dst, 'peer_aborted', peer_reason='fingerprint_mismatch')
        self.assertIn('source aborted: fingerprint_mismatch',
                      record['message'])

    def test_tls12_only_client(self):
        dst, endpoint = self.start_destination()
        self.assertRaises(OSError, self.raw_client, endpoint, tls12=True)
        self.assertRefusedPreauth(dst, 'tls_version')

    def test_garbage_instead_of_tls(self):
        dst, endpoint = self.start_destination()
        host, port = endpoint.rsplit(':', 1)
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' * 4)
            sock.settimeout(5)
            try:
                sock.recv(100)
            except OSError:
                pass
        _out, record = self.assertRefusedPreauth(dst, 'tls_handshake_failed')
        # Refused before any HELLO: the stream kind is unknown.
        self.assertNotIn('kind', record)
        self.assertIn('mig-1 destination/127.0.0.1:', record['label'])

    def test_refused_at_source_record_names_the_stream(self):
        dst, src, _ = self.start_pair(dst={'host': 'host-b2'})
        harness.FakeSourceQemu(self.src_sock, os.urandom(1000)).wait()
        outcome = self.assertRefused(src, 'fingerprint_mismatch', 'refused')
        self.assertRefusedPreauth(dst, 'peer_aborted')
        conn, = outcome['connections']
        self.assertEqual(('memory', 0), (conn['kind'], conn['index']))
        self.assertEqual('mig-1 source/memory#0', conn['label'])


class TestGrantRefusals(harness.TunnelTestCase):
    """The destination's own grant checks, probed with a raw source."""

    def _probe(self, grant, index=0, migration_id='mig-1', **dst):
        proc, endpoint = self.start_destination(**dst)
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(grant(endpoint) if callable(grant) else grant,
                                index=index, migration_id=migration_id))
        ftype, payload = self.read_frame(sock)
        sock.close()
        return proc, ftype, payload

    def _assert_grant_refused(self, reason, grant, **kw):
        proc, ftype, payload = self._probe(grant, **kw)
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual(reason, frames.pull_abort(payload).code.reason)
        self.assertRefusedPreauth(proc, reason, kind='memory',
                                  index=kw.get('index', 0))

    def test_expired_grant(self):
        self._assert_grant_refused(
            'grant_expired', lambda ep: self.pki.grant(
                ep, now=time.time() - 3600, ttl=60))

    def test_forged_grant(self):
        # Signed by a broker of a CA the destination does not trust.
        self._assert_grant_refused(
            'grant_invalid', lambda ep: self.pki.grant(
                ep, broker=self.pki.rogue.credentials('broker-b')))

    def test_grant_signed_by_a_host_not_a_broker(self):
        self._assert_grant_refused(
            'grant_invalid', lambda ep: self.pki.grant(
                ep, broker=self.pki.b.credentials('host-b2')))

    def test_tampered_grant_signature(self):
        def tampered(ep):
            token = self.pki.grant(ep)
            head, body, sig = token.split('.')
            claims = body[:-4] + ('AAAA' if body[-4:] != 'AAAA' else 'BBBB')
            return '.'.join((head, claims, sig))
        self._assert_grant_refused('grant_invalid', tampered)

    def test_other_migration_grant(self):
        self._assert_grant_refused(
            'grant_wrong_migration',
            lambda ep: self.pki.grant(ep, migration_id='mig-other'))

    def test_hello_for_other_migration(self):
        self._assert_grant_refused(
            'grant_wrong_migration', lambda ep: self.pki.grant(ep),
            migration_id='mig-other')

    def test_other_destination_grant(self):
        self._assert_grant_refused(
            'grant_wrong_destination',
            lambda ep: self.pki.grant(ep, dst_host='host-b2'))

    def test_grant_for_another_endpoint(self):
        self._assert_grant_refused(
            'grant_wrong_destination',
            lambda ep: self.pki.grant('127.0.0.1:1'))

    def test_connection_index_beyond_grant(self):
        self._assert_grant_refused(
            'stream_not_allowed',
            lambda ep: self.pki.grant(ep, streams={'memory': 1}), index=1)

    def test_refused_hello_record_names_the_stream(self):
        # The HELLO was read, so the record has the stream it asked for.
        proc, endpoint = self.start_destination()
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(self.pki.grant(endpoint), index=3,
                                kind='disk'))
        ftype, payload = self.read_frame(sock)
        sock.close()
        self.assertEqual(frames.FrameType.ABORT, ftype)
        _out, record = self.assertRefusedPreauth(proc, 'stream_not_allowed')
        self.assertEqual(('disk', 3), (record['kind'], record['index']))
        self.assertIn('mig-1 destination/127.0.0.1:', record['label'])

    def test_second_hello_on_used_connection_index(self):
        proc, endpoint = self.start_destination(
            expect_connections={'memory': 2})
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock,
                                               connections=2)
        self.addCleanup(qemu_dst.close)
        grant = self.pki.grant(endpoint)
        first = self.raw_client(endpoint)
        first.sendall(self.hello(grant, index=0))
        ftype, _ = self.read_frame(first)
        self.assertEqual(frames.FrameType.HELLO_OK, ftype)
        replay = self.raw_client(endpoint)
        replay.sendall(self.hello(grant, index=0))
        ftype, payload = self.read_frame(replay)
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual('connection_replayed',
                         frames.pull_abort(payload).code.reason)
        replay.close()
        # The first connection is authorized and stays the migration's.
        self.assertRefusedPreauth(proc, 'connection_replayed', authorized=1)
        first.close()

    def test_local_qemu_reached_in_the_sources_order(self):
        """Connection #1 ready first still reaches QEMU after #0.

        QEMU before 8.1 takes the first connection it accepts as the main
        channel; the destination tunnel keeps the source's order.
        """
        # #1 waits for #0 up to local_endpoint_timeout: long enough here
        # for this test to connect #0 on a busy machine.
        proc, endpoint = self.start_destination(
            expect_connections={'memory': 2}, local_endpoint_timeout=60.0)
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock,
                                               connections=2)
        self.addCleanup(qemu_dst.close)
        grant = self.pki.grant(endpoint, streams={'memory': 2})
        second = self.raw_client(endpoint)
        second.sendall(self.hello(grant, index=1))
        second.settimeout(1.0)
        # Without the ordering, HELLO_OK for #1 would come right away.
        self.assertRaises(socket.timeout, second.recv, 1)
        first = self.raw_client(endpoint)
        first.sendall(self.hello(grant, index=0))
        self.assertEqual(frames.FrameType.HELLO_OK,
                         self.read_frame(first)[0])
        second.settimeout(harness.TIMEOUT)
        self.assertEqual(frames.FrameType.HELLO_OK,
                         self.read_frame(second)[0])
        first.close()
        second.close()
        proc.terminate()

    def test_second_hello_within_a_connection(self):
        proc, endpoint = self.start_destination()
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        grant = self.pki.grant(endpoint)
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(grant))
        self.assertEqual(frames.FrameType.HELLO_OK, self.read_frame(sock)[0])
        sock.sendall(self.hello(grant))
        self.assertRefused(proc, 'unexpected_frame', 'failed')
        sock.close()

    def test_more_qemu_connections_than_granted(self):
        dst, src, _ = self.start_pair(
            grant_kwargs={'streams': {'memory': 1}},
            src={'expect_connections': {'memory': 2}})
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        # Connection #0 is through to the destination QEMU and stays open
        # while QEMU opens #1, which the grant does not allow.
        release = threading.Event()
        self.addCleanup(release.set)
        first = harness.FakeSourceQemu(self.src_sock, os.urandom(100),
                                       hold=release)
        harness.wait_for(lambda: qemu_dst.progress >= 100,
                         'connection #0 reached the destination QEMU')
        harness.FakeSourceQemu(self.src_sock, os.urandom(100)).wait()
        self.assertRefused(src, 'stream_not_allowed', 'refused')
        release.set()
        first.wait()
        self.assertNoSocketLeft()
        # Refused at the source: the destination never saw connection #1.
        _rc, dst_out = dst.wait(harness.TIMEOUT)
        self.assertEqual([0], [c['index'] for c in dst_out['connections']])
        self.assertEqual('terminated', dst_out['reason'])

    def test_source_refuses_expired_grant_before_listening(self):
        grant = self.pki.grant('127.0.0.1:9', now=time.time() - 3600,
                               ttl=60)
        proc = self.start(self.src_params(grant))
        self.assertRefused(proc, 'grant_expired', 'refused')
        self.assertIsNone(proc.ready)
        self.assertNoSocketLeft()

    def test_source_refuses_grant_for_another_source(self):
        grant = self.pki.grant('127.0.0.1:9', src=('a', 'host-a2'))
        proc = self.start(self.src_params(grant))
        self.assertRefused(proc, 'grant_wrong_source', 'refused')

    def test_source_refuses_forged_grant(self):
        grant = self.pki.grant('127.0.0.1:9',
                               broker=self.pki.rogue.credentials('broker-b'))
        proc = self.start(self.src_params(grant))
        self.assertRefused(proc, 'grant_invalid', 'refused')

    def test_source_refuses_other_migration_grant(self):
        grant = self.pki.grant('127.0.0.1:9', migration_id='mig-2')
        proc = self.start(self.src_params(grant))
        self.assertRefused(proc, 'grant_wrong_migration', 'refused')


class TestStreamFailures(harness.TunnelTestCase):

    def _data_frames_after_hello(self, raw_bytes):
        proc, endpoint = self.start_destination()
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        sock = self.raw_client(endpoint)
        sock.sendall(self.hello(self.pki.grant(endpoint)))
        self.assertEqual(frames.FrameType.HELLO_OK, self.read_frame(sock)[0])
        sock.sendall(raw_bytes)
        return proc, sock

    def test_unknown_frame_type(self):
        proc, sock = self._data_frames_after_hello(
            struct.pack('>BI', 9, 3) + b'abc')
        ftype, payload = self.read_frame(sock)
        self.assertEqual(frames.FrameType.ABORT, ftype)
        self.assertEqual('unknown_frame',
                         frames.pull_abort(payload).code.reason)
        self.assertRefused(proc, 'unknown_frame', 'failed')

    def test_oversize_frame_length(self):
        proc, sock = self._data_frames_after_hello(
            struct.pack('>BI', frames.FrameType.DATA, frames.MAX_DATA + 1))
        self.assertRefused(proc, 'frame_too_large', 'failed')

    def test_data_before_hello(self):
        proc, endpoint = self.start_destination()
        sock = self.raw_client(endpoint)
        sock.sendall(frames.push_data(b'memory'))
        self.assertRefusedPreauth(proc, 'unexpected_frame')
        sock.close()

    def test_truncation_before_end(self):
        # The raw source sends data, then closes without the closing
        # exchange: the destination must not report success.
        proc, sock = self._data_frames_after_hello(
            frames.push_data(os.urandom(5000)))
        sock.close()
        self.assertRefused(proc, 'truncated', 'failed')

    def test_truncation_by_proxy(self):
        dst, endpoint = self.start_destination()
        proxy = harness.Proxy(endpoint, cut_at=200000)
        self.addCleanup(proxy.close)
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        grant = self.pki.grant(proxy.endpoint)
        # advertise_endpoint: the grant names the proxy's address.
        dst.terminate(1)
        dst, endpoint = self.start_destination(
            advertise_endpoint=proxy.endpoint)
        proxy.target = _bound(dst)
        src = self.start(self.src_params(grant))
        src.wait_ready(harness.TIMEOUT)
        harness.FakeSourceQemu(self.src_sock, os.urandom(4 << 20)).wait()
        self.assertRefused(dst, 'truncated', 'failed')
        self.assertRefused(src, 'truncated', 'failed')
        self.assertNoSocketLeft()

    def test_byte_flipped_on_the_wire(self):
        proxy = harness.Proxy(None, flip_at=300000)
        self.addCleanup(proxy.close)
        dst, endpoint = self.start_destination(
            advertise_endpoint=proxy.endpoint)
        proxy.target = _bound(dst)
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        src = self.start(self.src_params(self.pki.grant(proxy.endpoint)))
        src.wait_ready(harness.TIMEOUT)
        harness.FakeSourceQemu(self.src_sock, os.urandom(4 << 20)).wait()
        self.assertTrue(proxy.flipped)
        # The destination detects the tampering. The source learns it from
        # the destination's alert, unless the path cuts the connection
        # first (this proxy tears both directions down; an attacker can
        # always drop the alert): then it sees the stream truncated.
        self.assertRefused(dst, 'stream_tampered', 'failed')
        rc, outcome = src.wait(harness.TIMEOUT)
        self.assertNotEqual(0, rc)
        self.assertEqual('failed', outcome['status'])
        self.assertIn(outcome['reason'], errors.PEER_DETECTED_OR_CUT)
        received = qemu_dst.wait()
        self.assertLess(received[0][0], 4 << 20)
        self.assertNoSocketLeft()

    def test_plaintext_corrupted_before_checkpoint(self):
        env = {'SECMIG_TUNNEL_TEST_HOOKS': '1'}
        dst, endpoint = self.start_destination()
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        src = self.start(self.src_params(
            self.pki.grant(endpoint),
            test_hooks={'corrupt_tx_at': 123456}), env=env)
        src.wait_ready(harness.TIMEOUT)
        harness.FakeSourceQemu(self.src_sock, os.urandom(4 << 20)).wait()
        self.assertRefused(dst, 'checkpoint_mismatch', 'failed')
        self.assertRefused(src, 'checkpoint_mismatch', 'failed')

    def test_test_hooks_need_the_environment(self):
        proc = self.start(self.src_params(
            self.pki.grant('127.0.0.1:9'),
            test_hooks={'corrupt_tx_at': 1}))
        self.assertRefused(proc, 'config_invalid')

    def test_destination_qemu_never_appears(self):
        dst, src, _ = self.start_pair(dst={'local_endpoint_timeout': 0.5})
        harness.FakeSourceQemu(self.src_sock, os.urandom(1000)).wait()
        self.assertRefused(dst, 'local_endpoint_unavailable')
        self.assertRefused(src, 'local_endpoint_unavailable')

    def _slow_destination_qemu(self):
        """A destination QEMU reading slowly, once bytes are flowing.

        The destination tunnel then has data queued for its QEMU, and
        more behind it, unread, on the TLS connection.
        """
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock,
                                               read_size=16384, pace=0.02)
        self.addCleanup(qemu_dst.close)
        feeder = harness.FakeSourceQemu(self.src_sock, os.urandom(32 << 20))
        harness.wait_for(lambda: qemu_dst.progress >= 256 * 1024,
                         'bytes flowing to the destination QEMU')
        return qemu_dst, feeder

    def test_source_killed_while_destination_qemu_lags(self):
        # The source tunnel dies (no ABORT, no closing exchange) while the
        # destination still has data for its slow QEMU, which then gives
        # up. The peer truncated the stream; the failed write to QEMU is
        # only the consequence and must not hide it.
        dst, src, _ = self.start_pair()
        qemu_dst, feeder = self._slow_destination_qemu()
        src.kill()
        time.sleep(0.3)
        qemu_dst.hang_up()
        outcome = self.assertRefused(dst, 'truncated', 'failed')
        conn, = outcome['connections']
        self.assertEqual('truncated', conn['reason'])
        self.assertEqual('memory', conn['kind'])
        self.assertLess(qemu_dst.progress, 32 << 20)
        feeder.wait()

    def test_destination_qemu_gives_up_mid_stream(self):
        # The same slow QEMU gives up while the source is alive: that is
        # the local endpoint's failure, and the source is told so.
        dst, src, _ = self.start_pair()
        qemu_dst, feeder = self._slow_destination_qemu()
        qemu_dst.hang_up()
        self.assertRefused(dst, 'local_endpoint_unavailable', 'failed')
        self.assertRefused(src, 'local_endpoint_unavailable', 'failed')
        feeder.wait()
        self.assertNoSocketLeft()

    def test_sigterm_aborts_cleanly(self):
        dst, src, _ = self.start_pair()
        qemu_dst = harness.FakeDestinationQemu(self.dst_qemu_sock)
        self.addCleanup(qemu_dst.close)
        # The feeder takes at least 128 x 0.05 s to send its 8 MiB.
        total = 8 << 20
        feeder = harness.FakeSourceQemu(self.src_sock, os.urandom(total),
                                        chunk=65536, pace=0.05)
        # Mid-stream: bytes are reaching the destination QEMU.
        harness.wait_for(lambda: qemu_dst.progress > 0,
                         'bytes flowing to the destination QEMU')
        src.proc.send_signal(signal.SIGTERM)
        outcome = self.assertRefused(src, 'terminated', 'aborted')
        self.assertRefused(dst, 'terminated')
        self.assertEqual('aborted', outcome['connections'][0]['status'])
        # Stopped, not drained: the stream ended short of its end.
        self.assertLess(outcome['connections'][0]['src_to_dst']['bytes'],
                        total)
        feeder.wait()
        self.assertNoSocketLeft()

    def test_sigterm_before_any_connection(self):
        dst, src, _ = self.start_pair()
        src.proc.send_signal(signal.SIGTERM)
        self.assertRefused(src, 'terminated', 'aborted')
        dst.proc.send_signal(signal.SIGTERM)
        self.assertRefused(dst, 'terminated', 'aborted')
        self.assertNoSocketLeft()


def _bound(proc):
    return proc.ready['bound']
