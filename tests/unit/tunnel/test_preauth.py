"""Tests for the destination's pre-authentication bookkeeping and for the
escaping of peer text (secmig_nova.tunnel.preauth, errors.peer_text).
"""

import errno
import socket

import testtools

from secmig_nova.tunnel import endpoint
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import frames
from secmig_nova.tunnel import params
from secmig_nova.tunnel import preauth
from tests.fixtures import pki as pki_fixture


class PeerTextTest(testtools.TestCase):

    def test_printable_text_unchanged(self):
        self.assertEqual('grant for mig-1 at 10.0.0.1:49400 (ok)',
                         errors.peer_text('grant for mig-1 at '
                                          '10.0.0.1:49400 (ok)'))
        self.assertEqual('h\u00f4te-\u00e9t\u00e9',
                         errors.peer_text('h\u00f4te-\u00e9t\u00e9'))

    def test_newlines_and_controls_escaped(self):
        self.assertEqual('a\\x0ab\\x0dc\\x00d\\x1be\\x7ff\\x85g',
                         errors.peer_text('a\nb\rc\x00d\x1be\x7ff\x85g'))

    def test_unicode_separators_and_format_characters(self):
        # Line/paragraph separators, a right-to-left override, a BOM.
        self.assertEqual('\\u2028\\u2029\\u202e\\ufeff',
                         errors.peer_text('\u2028\u2029\u202e\ufeff'))

    def test_backslash_escaped_so_escapes_are_unambiguous(self):
        self.assertEqual('\\\\x0a is not \\x0a',
                         errors.peer_text('\\x0a is not \n'))

    def test_limit(self):
        self.assertEqual('abc...', errors.peer_text('abcdef', limit=3))
        self.assertEqual('abc', errors.peer_text('abc', limit=3))
        self.assertEqual('x' * 1000, errors.peer_text('x' * 1000,
                                                      limit=None))

    def test_bytes_and_other_types(self):
        self.assertEqual('ab\\\\xff\\x0a', errors.peer_text(b'ab\xff\n'))
        self.assertEqual('42', errors.peer_text(42))

    def test_tunnel_error_never_carries_a_control_character(self):
        e = errors.TunnelError('grant_invalid', 'claim was "x\ny"')
        self.assertEqual('claim was "x\\x0ay"', e.args[0])
        self.assertEqual('grant_invalid: claim was "x\\x0ay"', str(e))

    def test_peer_abort_reason_escaped_and_kept_apart(self):
        e = errors.from_abort(frames.Abort(
            code=frames.AbortCode.FINGERPRINT_MISMATCH,
            reason='no\nFORGED LINE'), 'source')
        self.assertEqual('fingerprint_mismatch', e.reason)
        self.assertEqual('fingerprint_mismatch', e.peer_reason)
        self.assertEqual('source aborted: fingerprint_mismatch '
                         '(no\\x0aFORGED LINE)', e.args[0])


class FakeClock:

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeLog:

    def __init__(self):
        self.lines = []

    def warning(self, msg, *args):
        self.lines.append(msg % args)


class TallyTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.clock = FakeClock()
        self.log = FakeLog()
        self.events = []
        self.tally = preauth.Tally(log_first=2, summary_interval=60.0,
                                   keep=3, clock=self.clock,
                                   on_event=self.events.append, log=self.log)

    def test_first_refusals_of_each_reason_logged_one_by_one(self):
        for i in range(5):
            self.tally.refused('c%d' % i, 'timeout', 'idle')
        self.tally.refused('x', 'tls_handshake_failed', 'junk')
        self.assertEqual(3, len(self.log.lines))
        self.assertIn('c0: refused before authorization (timeout): idle',
                      self.log.lines[0])
        self.assertIn('only summarised', self.log.lines[1])
        self.assertIn('(tls_handshake_failed)', self.log.lines[2])
        self.assertEqual([('timeout', 1), ('timeout', 2),
                          ('tls_handshake_failed', 1)],
                         [(e['reason'], e['count']) for e in self.events])
        self.assertEqual({'timeout': 5, 'tls_handshake_failed': 1},
                         self.tally.counts)
        self.assertEqual(6, self.tally.total)

    def test_flood_gives_periodic_summaries_not_lines(self):
        for i in range(10000):
            self.tally.refused('c%d' % i, 'timeout', 'idle')
            if i == 5000:
                self.clock.now += 61
        self.assertEqual(3, len(self.log.lines))
        # The summary comes with the first refusal after the interval.
        self.assertIn('refused 5000 more connection(s) before authorization'
                      ', not logged one by one: timeout x5000; 5002 refused '
                      'in total', self.log.lines[2])
        self.clock.now += 30
        self.tally.tick()
        self.assertEqual(3, len(self.log.lines))
        self.clock.now += 31
        self.tally.tick()
        self.assertEqual(4, len(self.log.lines))
        self.assertIn('timeout x4998; 10000 refused in total',
                      self.log.lines[3])
        self.tally.tick()
        self.assertEqual(4, len(self.log.lines))
        self.assertEqual(['refused', 'refused', 'refused_summary',
                          'refused_summary'],
                         [e['event'] for e in self.events])

    def test_flush_logs_what_is_left(self):
        for i in range(4):
            self.tally.refused('c%d' % i, 'timeout', 'idle')
        self.tally.flush()
        self.assertEqual(3, len(self.log.lines))
        self.assertIn('timeout x2', self.log.lines[2])
        self.tally.flush()
        self.assertEqual(3, len(self.log.lines))

    def test_records_bounded_and_escaped(self):
        for i in range(5):
            self.tally.refused('c%d' % i, 'peer_aborted', 'said\nhi',
                               peer_reason='x\ny', kind='memory', index=i)
        self.assertEqual(3, len(self.tally.records))
        self.assertEqual({'label': 'c0', 'reason': 'peer_aborted',
                          'message': 'said\\x0ahi', 'peer_reason': 'x\\x0ay',
                          'kind': 'memory', 'index': 0},
                         self.tally.records[0])
        for line in self.log.lines:
            self.assertNotIn('\n', line)
        self.assertEqual('5 connection(s) refused before authorization '
                         '(peer_aborted x5); first: peer_aborted: '
                         'said\\x0ahi', self.tally.summary())

    def test_no_summary_without_refusals(self):
        self.assertEqual('', self.tally.summary())


class GateTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.gate = preauth.Gate(3)

    def admit(self, address):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        slot, victim = self.gate.admit(a, address)
        return slot, victim, b

    def assertShutDown(self, peer_end):
        peer_end.settimeout(5)
        self.assertEqual(b'', peer_end.recv(1))

    def test_below_the_cap_nothing_is_evicted(self):
        for address in ('10.0.0.1', '10.0.0.2', '10.0.0.3'):
            _slot, victim, _peer = self.admit(address)
            self.assertIsNone(victim)
        self.assertEqual(3, len(self.gate))

    def test_at_the_cap_the_oldest_of_the_heaviest_address_goes(self):
        first, _, peer_first = self.admit('10.0.0.9')
        second, _, _ = self.admit('10.0.0.9')
        real, _, _ = self.admit('10.0.0.1')
        # The newcomer from 10.0.0.1 evicts 10.0.0.9's oldest, although
        # the real source's connection is not the youngest.
        _new, victim, _ = self.admit('10.0.0.1')
        self.assertIs(first, victim)
        self.assertEqual(preauth.EVICTED, first.closed_reason)
        self.assertShutDown(peer_first)
        self.assertEqual(3, len(self.gate))
        self.assertIsNone(real.closed_reason)
        # Now both addresses hold two (the newcomer counted): the oldest
        # of them goes.
        _, victim, _ = self.admit('10.0.0.9')
        self.assertIs(second, victim)

    def test_one_address_flood_only_evicts_itself(self):
        real, _, _ = self.admit('10.0.0.1')
        for _ in range(50):
            _, victim, _ = self.admit('10.0.0.66')
            self.assertIsNot(real, victim)
        self.assertIsNone(real.closed_reason)
        self.assertTrue(self.gate.authorize(real))

    def test_handshake_stage_goes_before_hello_stage(self):
        old, _, _ = self.admit('10.0.0.1')
        self.gate.handshake_done(old)
        young, _, _ = self.admit('10.0.0.1')
        self.admit('10.0.0.2')
        _, victim, _ = self.admit('10.0.0.3')
        self.assertIs(young, victim)
        self.assertIsNone(old.closed_reason)

    def test_all_in_hello_stage_evicts_the_oldest(self):
        slots = [self.admit('10.0.0.%d' % i)[0] for i in range(3)]
        for slot in slots:
            self.gate.handshake_done(slot)
        _, victim, _ = self.admit('10.0.0.7')
        self.assertIs(slots[0], victim)

    def test_evicted_slot_cannot_be_authorized(self):
        first, _, _ = self.admit('10.0.0.1')
        for _ in range(3):
            self.admit('10.0.0.1')
        self.assertEqual(preauth.EVICTED, first.closed_reason)
        self.assertFalse(self.gate.authorize(first))

    def test_authorized_and_released_slots_leave_the_gate(self):
        a, _, _ = self.admit('10.0.0.1')
        b, _, _ = self.admit('10.0.0.1')
        self.assertTrue(self.gate.authorize(a))
        self.gate.release(b)
        self.assertEqual(0, len(self.gate))
        self.assertIsNone(a.closed_reason)

    def test_close_all(self):
        peers = [self.admit('10.0.0.1')[2] for _ in range(2)]
        self.assertEqual(2, self.gate.close_all())
        self.assertEqual(0, len(self.gate))
        for peer in peers:
            self.assertShutDown(peer)


class FailingListener:
    """A readable listener whose accept() fails with EMFILE, then stops."""

    def __init__(self, test, endpoint_):
        self.readable, self.other = socket.socketpair()
        test.addCleanup(self.readable.close)
        test.addCleanup(self.other.close)
        self.other.sendall(b'x')
        self.endpoint = endpoint_
        self.calls = 0

    def fileno(self):
        return self.readable.fileno()

    def accept(self):
        self.calls += 1
        if self.calls > 3:
            self.endpoint.terminate('test over')
            raise BlockingIOError()
        raise OSError(errno.EMFILE, 'Too many open files')


class AcceptFailureTest(testtools.TestCase):

    def test_accept_failure_is_counted_not_the_end(self):
        pki = pki_fixture.get()
        cert_file, key_file = pki.b.hosts['host-b']
        dst = endpoint.DestinationEndpoint(params.from_dict({
            'side': 'destination', 'migration_id': 'mig-1',
            'cloud_id': 'cloud-b', 'cert_file': cert_file,
            'key_file': key_file, 'ca_file': pki.b.ca.ca_file,
            'peer': pki.a.trust(), 'sockets': {'memory': '/nonexistent'},
            'deadline': 30.0}, environ={}))
        listener = FailingListener(self, dst)
        dst._accept_loop([(listener,)], lambda *a: self.fail('accepted'))
        out = dst.outcome()
        self.assertEqual(4, listener.calls)
        self.assertEqual({'resources_exhausted': 3}, out['refused'])
        # The tunnel ran on until stopped.
        self.assertEqual(('aborted', 'test over'),
                         (out['status'], out['reason']))
        self.assertIn('Too many open files', out['message'])
