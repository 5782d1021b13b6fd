"""End to end on real libvirt and QEMU: the tunnel fails closed, hides the
guest's memory and keeps concurrent migrations apart.

No mocks and no skips; one lab (tools/lab: two libvirtds in their own
mount/UTS namespaces, TCG guests) for the whole class, as in
test_lab_migration.py, which covers the successful migration A->B->A with
receipts. Here:

* a proxy in the tunnel path flips one byte mid-stream;
* the source tunnel holds a grant for another destination host (two
  ways: the pinned certificate is another host's, or the named endpoint
  is another host's);
* the source tunnel is killed (SIGKILL) mid-stream;
* tcpdump on ``lo`` sees the marker string the guest keeps in memory in a
  plain migration, and not in the tunnel's traffic;
* two guests migrate at once through two tunnel pairs.

After each failure the guest must still run on host a, with its heartbeat
rising in a's serial log and no reboot, libvirt's migrateToURI3 must have
raised, both tunnels must have ended non-zero with the named reason, and
no tunnel process or socket file may be left on either host.
"""

import json
import os
import signal
import threading
import time

from testtools import content
from tools.lab import lab as lab_mod

from secmig_nova.authz import tokens
from secmig_nova.tunnel import errors as tunnel_errors
from tests.functional.lab import base
from tests.functional import tunnel_harness as harness

MIB = base.MIB
# libvirt's job is aborted after this (the lab's watchdog): generous, a
# migration of these guests takes seconds.
MIGRATE_TIMEOUT = 300
# Offset in the TLS byte stream (source -> destination) of the flipped
# byte: well after the handshake and the first guest pages, well before
# the ~130 MiB of a migration are through.
FLIP_AT = 8 * MIB
# The source tunnel is killed once QEMU reports this much sent ...
KILL_AFTER = 16 * MIB
# ... with QEMU's bandwidth capped (MiB/s; QEMU sends a tenth of it at the
# start of every 100 ms window), half a window after a burst: the
# destination tunnel has passed everything on to its QEMU and waits for
# more when its peer dies (see the test's docstring).
KILL_BANDWIDTH = 16
KILL_DELAY = 0.05
# Bytes a refused source may send before the refusal: the TLS handshake
# and an ABORT frame, never a guest page batch.
HANDSHAKE_BYTES = 16 * 1024
# A destination tunnel that refused the source before authorizing it runs
# on (anyone could have been refused) until stopped, as under the driver:
# the lab stops it after this many seconds.
REFUSED_DESTINATION_WAIT = 10


class EndToEndTest(base.LabTestCase):

    # -- helpers -------------------------------------------------------------

    def record(self, result, **extra):
        outcomes = {}
        for side, (rc, out) in result.tunnels.items():
            outcomes[side] = {'rc': rc}
            if out:
                outcomes[side].update(
                    {k: out.get(k) for k in ('status', 'reason', 'message')},
                    connections=[{k: c.get(k) for k in (
                        'status', 'reason', 'src_to_dst', 'dst_to_src')}
                        for c in out.get('connections', [])])
        detail = dict(result.summary(), stale_sockets=result.stale_sockets,
                      terminated=result.terminated, outcomes=outcomes,
                      **extra)
        self.addDetail('migration-%s-%s' % (result.kind, result.guest),
                       content.text_content(json.dumps(detail, default=str)))
        for side, text in result.tunnel_stderr.items():
            self.addDetail('tunnel-%s-%s-stderr' % (result.guest, side),
                           content.text_content(text[-4000:]))

    def assertCleanedUp(self, result, killed_source=False):
        """What the lab (as the compute driver would) had to remove.

        libvirt kills the destination QEMU of a failed migration, and
        QEMU 7.2 unlinks its incoming UNIX socket only when an incoming
        migration ends normally, so b's ``/run/secmig/<id>.sock`` is left
        to the orchestrator; a source tunnel removes its own socket unless
        it is SIGKILLed. Then nothing may be left anywhere.
        """
        sock = '%s/%s.sock' % (lab_mod.SOCKET_DIR, result.migration_id)
        expected = ['b:' + sock]
        if killed_source:
            expected.insert(0, 'a:' + sock)
        self.assertEqual(expected, result.stale_sockets)
        self.assertNothingLeft(result)

    def assertNothingLeft(self, result):
        """No tunnel process, no socket file, on either host."""
        for side, proc in result.procs.items():
            self.assertIsNotNone(proc.proc.poll(),
                                 '%s tunnel still runs' % side)
        self.assertNoTunnelLeft()

    def assertFailedWith(self, result, side, reason, status):
        return self.assertFailedWithOneOf(result, side, (reason,), status)

    def assertFailedWithOneOf(self, result, side, reasons, status):
        rc, outcome = result.tunnels[side]
        self.assertIsNotNone(outcome, '%s tunnel printed no outcome: %s'
                             % (side, result.tunnel_stderr[side][-2000:]))
        self.assertNotEqual(0, rc, outcome)
        detail = '%s tunnel: %s\n%s' % (
            side, outcome, result.tunnel_stderr.get(side, '')[-2000:])
        self.assertEqual(status, outcome['status'], detail)
        self.assertIn(outcome.get('reason'), set(reasons), detail)
        return outcome

    def assertMigrationRaised(self, result, stopped=()):
        libvirt = lab_mod._libvirt()
        self.assertIsInstance(result.error, libvirt.libvirtError,
                              'the migration did not fail')
        self.assertIsNone(result.during_error)
        # The tunnels ended by themselves, except the ``stopped`` ones.
        self.assertEqual(list(stopped), result.terminated)

    @staticmethod
    def sent(outcome):
        """Plaintext bytes the tunnel moved source -> destination."""
        return sum(c.get('src_to_dst', {}).get('bytes', 0)
                   for c in outcome['connections'])

    # -- tests ---------------------------------------------------------------

    def test_byte_flipped_in_tunnel_path(self):
        """One bit flipped on the wire: stream_tampered, guest stays on a."""
        a, b = self.a, self.b
        self.boot(a, 'flip')
        proxy = harness.Proxy(None, flip_at=FLIP_AT)
        self.addCleanup(proxy.close)

        def through_proxy(_result, ready):
            proxy.target = ready['bound']

        mark = self.mark(b, 'flip')
        result = self.lab.migrate_secure(
            a, b, 'flip', check=False, timeout=MIGRATE_TIMEOUT,
            destination_params={'advertise_endpoint': proxy.endpoint},
            on_destination_ready=through_proxy)
        self.record(result)
        self.assertMigrationRaised(result)
        self.assertTrue(proxy.flipped, 'the proxy never reached the offset')
        self.assertEqual(proxy.endpoint, result.ready['destination']
                         ['endpoint'])
        # The destination detected the flipped byte: its reason is exact.
        # The source learns it from the destination's alert, unless the
        # torn-down path closes the connection first: it can only know
        # "the peer detected tampering or the path was cut".
        dst_out = self.assertFailedWith(result, 'destination',
                                        'stream_tampered', 'failed')
        src_out = self.assertFailedWithOneOf(
            result, 'source', tunnel_errors.PEER_DETECTED_OR_CUT, 'failed')
        # Mid-stream: guest memory went through before the flipped byte;
        # less than the bytes before it reached the destination QEMU.
        self.assertGreater(self.sent(dst_out), MIB)
        self.assertLess(self.sent(dst_out), FLIP_AT)
        self.assertGreater(self.sent(src_out), self.sent(dst_out))
        self.assertStillOnSource('flip', a, b, mark)
        self.assertCleanedUp(result)

    def _wrong_destination(self, name, grant_for, advertise_proxy):
        a, b = self.a, self.b
        self.boot(a, name)
        proxy = harness.Proxy()
        self.addCleanup(proxy.close)

        def through_proxy(_result, ready):
            proxy.target = ready['bound']

        mark = self.mark(b, name)
        extra = {'advertise_endpoint': proxy.endpoint} \
            if advertise_proxy else {}
        result = self.lab.migrate_secure(
            a, b, name, check=False, timeout=MIGRATE_TIMEOUT,
            tunnel_timeout=REFUSED_DESTINATION_WAIT,
            destination_params=extra, on_destination_ready=through_proxy,
            grant=lambda result, endpoint, instance_uuid, streams:
                grant_for(result, proxy.endpoint, instance_uuid, streams))
        self.record(result, proxy=proxy.forwarded)
        # The destination does not end on a refusal before authorization.
        self.assertMigrationRaised(result, stopped=['destination'])
        # The source did connect (through the proxy) and was refused
        # before it read anything from QEMU: no guest memory left host a.
        self.assertEqual(1, proxy.connections)
        self.assertLess(proxy.forwarded['src_to_dst'], HANDSHAKE_BYTES)
        return result, mark

    def assertRefusedBeforeMemory(self, result, name, mark, reason,
                                  dst_reason=None, dst_peer_reason=None):
        """Refused before any guest memory moved.

        The source fails with ``reason``. The destination never authorized
        the connection, so it is not the migration's failure there: the
        stopped destination lists it under ``refused`` as ``dst_reason``
        (default ``reason``; ``peer_aborted`` with ``dst_peer_reason``
        when the source refused first and said so in an ABORT).
        """
        src_out = self.assertFailedWith(result, 'source', reason, 'refused')
        dst_out = self.assertFailedWith(result, 'destination', 'terminated',
                                        'aborted')
        dst_reason = dst_reason or reason
        detail = 'destination tunnel: %s' % dst_out
        self.assertEqual({dst_reason: 1}, dst_out['refused'], detail)
        record, = dst_out['refused_connections']
        self.assertEqual(dst_reason, record['reason'], detail)
        if dst_peer_reason:
            self.assertEqual(dst_peer_reason, record['peer_reason'], detail)
        self.assertIn('no connection was authorized', dst_out['message'])
        # The source tunnel never read guest memory from QEMU (a connection
        # record without byte counts); the destination tunnel never
        # authorized a connection, so never passed a byte to its QEMU.
        self.assertEqual(0, self.sent(src_out))
        self.assertEqual(1, len(src_out['connections']))
        self.assertNotIn('src_to_dst', src_out['connections'][0])
        self.assertEqual([], dst_out['connections'], detail)
        self.assertStillOnSource(name, self.a, self.b, mark)
        self.assertCleanedUp(result)

    def test_grant_pins_another_destination_host(self):
        """Grant for host lab-c (its certificate), the source lands on b.

        The source pins lab-c's certificate and refuses b's at the TLS
        handshake (fingerprint_mismatch), before HELLO; b hears it by an
        ABORT, which it counts (peer_aborted) but cannot trust before
        HELLO, so it runs on until stopped.
        """
        other = self.lab.pki.other_host('b', 'lab-c')

        def grant_for_c(result, endpoint, instance_uuid, streams):
            return self.lab.pki.grant(
                'a', 'b', endpoint, result.migration_id, instance_uuid,
                streams, dst_host='lab-c', dst_fingerprint=other.fingerprint)

        result, mark = self._wrong_destination('pinned', grant_for_c,
                                               advertise_proxy=True)
        self.assertNotEqual(other.fingerprint,
                            result.ready['destination']['fingerprint'])
        self.assertRefusedBeforeMemory(
            result, 'pinned', mark, 'fingerprint_mismatch',
            dst_reason='peer_aborted', dst_peer_reason='fingerprint_mismatch')

    def test_grant_names_another_destination_endpoint(self):
        """Grant for host lab-c's endpoint, which leads to b's tunnel.

        b's certificate matches the pin, so b itself refuses: the grant
        does not name b's endpoint (grant_wrong_destination). The HELLO
        was not authorized, so b counts the refusal and runs on until
        stopped.
        """
        def grant_for_c(result, endpoint, instance_uuid, streams):
            return self.lab.pki.grant(
                'a', 'b', endpoint, result.migration_id, instance_uuid,
                streams, dst_host='lab-c')

        result, mark = self._wrong_destination('endpoint', grant_for_c,
                                               advertise_proxy=False)
        self.assertNotEqual(result.ready['destination']['endpoint'],
                            tokens.unverified_claims(
                                result.procs['source'].params['grant'])
                            ['dst_endpoint'])
        self.assertRefusedBeforeMemory(result, 'endpoint', mark,
                                       'grant_wrong_destination')

    def test_source_tunnel_killed_mid_stream(self):
        """SIGKILL to the source tunnel: b reports truncated, guest on a.

        The destination tunnel can name the truncation only if it sees its
        peer's end before libvirt kills the destination QEMU (~15 ms after
        the source QEMU hit the broken socket). With a backlog for its QEMU
        it does not read the TLS side, and the dead source's FIN waits in
        the source kernel behind data not yet read (TCP flow control), so
        it reports local_endpoint_unavailable instead (10 runs of 10
        unthrottled). Capping QEMU's bandwidth and killing between two
        bursts leaves no backlog.
        """
        a, b = self.a, self.b
        self.boot(a, 'killed')
        libvirt = lab_mod._libvirt()
        dom = a.domain('killed')
        seen = {}

        def kill_source(result):
            deadline = time.monotonic() + MIGRATE_TIMEOUT
            while time.monotonic() < deadline:
                stats = dom.jobStats()
                if stats.get('type') == libvirt.VIR_DOMAIN_JOB_UNBOUNDED \
                        and stats.get('memory_processed', 0) >= KILL_AFTER:
                    time.sleep(KILL_DELAY)
                    seen['at_kill'] = stats['memory_processed']
                    seen['total'] = stats.get('memory_total')
                    os.kill(result.procs['source'].pid, signal.SIGKILL)
                    seen['killed_at'] = time.time()
                    return
                time.sleep(0.005)
            raise AssertionError('the migration never got going')

        mark = self.mark(b, 'killed')
        result = self.lab.migrate_secure(a, b, 'killed', check=False,
                                         timeout=MIGRATE_TIMEOUT,
                                         during=kill_source,
                                         bandwidth_mib=KILL_BANDWIDTH)
        self.record(result, at_kill=seen)
        self.assertMigrationRaised(result)
        self.assertIn('at_kill', seen)
        rc, outcome = result.tunnels['source']
        self.assertEqual((-signal.SIGKILL, None), (rc, outcome))
        dst_out = self.assertFailedWith(result, 'destination', 'truncated',
                                        'failed')
        # Killed mid-stream: guest memory had gone through, not all of it.
        self.assertGreater(self.sent(dst_out), MIB)
        self.assertStillOnSource('killed', a, b, mark)
        self.assertCleanedUp(result, killed_source=True)

    def test_capture_shows_marker_only_without_tunnel(self):
        """tcpdump on lo: plain migration leaks the marker, tunnel not."""
        a, b = self.a, self.b
        marker = self.boot(a, 'wiretap').encode()

        # Control: a plain migration a -> b on b's migration ports.
        plain_cap = self.lab.capture([b.migration_ports()], 'plain')
        self.addCleanup(plain_cap.remove)
        mark = self.mark(b, 'wiretap')
        plain = self.lab.migrate_plain(a, b, 'wiretap',
                                       timeout=MIGRATE_TIMEOUT)
        plain_stats = plain_cap.stop()
        self.record(plain)
        self.assertContinued('wiretap', a, b, mark)
        plain_streams = plain_cap.streams()
        plain_bytes = sum(len(v) for v in plain_streams.values())
        plain_hits = sum(v.count(marker) for v in plain_streams.values())

        # The same guest back b -> a through the tunnel, capturing the
        # destination tunnel's port from before the source connects.
        caps = []

        def tap(_result, ready):
            port = int(ready['bound'].rsplit(':', 1)[1])
            caps.append(self.lab.capture([port], 'secure'))
            self.addCleanup(caps[0].remove)

        mark = self.mark(a, 'wiretap')
        secure = self.lab.migrate_secure(b, a, 'wiretap',
                                         timeout=MIGRATE_TIMEOUT,
                                         on_destination_ready=tap)
        secure_stats = caps[0].stop()
        self.record(secure)
        self.assertContinued('wiretap', b, a, mark)
        tunnel = self.assertReceipts(secure, b, a,
                                     a.domain('wiretap').UUIDString())
        secure_raw = caps[0].read()
        secure_streams = caps[0].streams()
        secure_bytes = sum(len(v) for v in secure_streams.values())
        self.addDetail('captures', content.text_content(json.dumps({
            'plain': dict(plain_stats, payload_bytes=plain_bytes,
                          marker_hits=plain_hits,
                          qemu_bytes=plain.bytes),
            'secure': dict(secure_stats, payload_bytes=secure_bytes,
                           tunnel_bytes=tunnel['src_to_dst']['bytes'])})))

        # Both captures are complete: nothing dropped, every byte there.
        for stats in (plain_stats, secure_stats):
            self.assertEqual(0, stats.get('dropped_by_kernel'), stats)
        self.assertGreaterEqual(plain_bytes, plain.bytes)
        self.assertGreaterEqual(secure_bytes,
                                tunnel['src_to_dst']['bytes'])
        # The control: the guest's memory crosses a plain migration in
        # clear, marker and all (4 MiB of marker lines in its tmpfs).
        self.assertGreater(plain_hits, 1000)
        self.assertIn(marker, plain_cap.read())
        # The tunnel: not once, neither in the raw capture nor in the
        # reassembled TCP streams (a marker cut across two packets).
        self.assertNotIn(marker, secure_raw)
        for stream in secure_streams.values():
            self.assertNotIn(marker, stream)
            self.assertNotIn(lab_mod.MARKER.encode(), stream)
            self.assertNotIn(b'SECMIG-HEARTBEAT', stream)

    def test_two_migrations_at_once(self):
        """Two guests, two tunnel pairs, at the same time: no cross-talk."""
        a, b = self.a, self.b
        names = ('twin1', 'twin2')
        markers = {name: self.boot(a, name).encode() for name in names}
        uuids = {name: a.domain(name).UUIDString() for name in names}
        marks = {name: self.mark(b, name) for name in names}
        results, errors = {}, {}
        # Both start migrating once both tunnel pairs are ready: setting up
        # a pair (two tunnel processes) can take longer than a migration
        # on a busy machine.
        go = threading.Barrier(len(names))

        def migrate(name):
            try:
                results[name] = self.lab.migrate_secure(
                    a, b, name, timeout=MIGRATE_TIMEOUT,
                    before_migrate=lambda _result: go.wait(MIGRATE_TIMEOUT))
            except Exception as e:  # noqa: reported below
                errors[name] = e
                go.abort()

        threads = [threading.Thread(target=migrate, args=(name,))
                   for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(MIGRATE_TIMEOUT + 60)
        self.assertEqual({}, errors)
        for name in names:
            self.record(results[name])
        r1, r2 = results['twin1'], results['twin2']
        # They really ran at the same time, on separate tunnels.
        self.assertLess(max(r1.started, r2.started),
                        min(r1.ended, r2.ended))
        self.assertNotEqual(r1.migration_id, r2.migration_id)
        self.assertNotEqual(r1.ready['destination']['bound'],
                            r2.ready['destination']['bound'])
        for name in names:
            result = results[name]
            other = [n for n in names if n != name][0]
            self.assertIsNone(a.domain(name))
            self.assertTrue(b.domain(name).isActive())
            self.assertEqual(uuids[name], b.domain(name).UUIDString())
            # Each pair's receipts name its own guest and migration.
            self.assertReceipts(result, a, b, uuids[name])
            self.assertContinued(name, a, b, marks[name])
            after = self.lab.serial(b, name)[marks[name]:]
            self.assertIn(markers[name], after)
            self.assertNotIn(markers[other], after)
            # Its RAM on b is its own: its marker, never the other's.
            memory = self.lab.memory_dump(b, name)
            self.assertGreater(memory.count(markers[name]), 1000)
            self.assertNotIn(markers[other], memory)
        self.assertNothingLeft(r1)
        self.assertNothingLeft(r2)
