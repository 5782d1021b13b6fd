"""The destination's listening port before a peer is authorized.

Anyone who can reach the port can open a connection, so nothing that happens
before a peer completed the TLS handshake *and* presented a HELLO that passes
the grant checks may touch the migration. This module holds what the
destination keeps about such connections instead:

* :class:`Gate` caps the number of unauthenticated connections held at once.
  At the cap a new connection is still admitted and an older one is closed
  (evicted), so idle connections can never lock the real source out. The
  victim is chosen among connections still in the TLS handshake (which
  anyone can open) before those that completed it (which needs a
  certificate of the peer cloud), from the peer address that holds the most
  of them, oldest first: an attacker using one address only ever evicts its
  own connections; to evict the real source during its handshake it needs
  at least as many addresses as the real source has connections in flight,
  and must open ``cap`` new connections within one handshake's duration.
* :class:`Tally` counts refused connections per reason, keeps the first few
  records for the outcome, and logs rate-limited: the first few refusals of
  each reason one line each, then a periodic summary, never a line per
  connection under a flood.
"""

import collections
import itertools
import socket
import threading
import time

from oslo_log import log as logging

from secmig_nova.tunnel import errors

LOG = logging.getLogger(__name__)

# Reasons of connections closed by the destination itself, not refused for
# what the peer presented.
EVICTED = 'preauth_evicted'
CLOSED_AT_STOP = 'closed_at_stop'
# A peer that is not authorized sent ABORT: its claimed reason is kept in the
# record, never used as the reason (it could name anything).
PEER_ABORTED = errors.PEER_ABORTED

HANDSHAKE = 'handshake'     # TCP accepted, TLS handshake not done
HELLO = 'hello'             # TLS done (peer-cloud certificate), no HELLO yet


class Slot:
    """One unauthenticated connection held by the :class:`Gate`."""

    def __init__(self, seq, address, handle):
        self.seq = seq
        self.address = address
        self.stage = HANDSHAKE
        self.closed_reason = None     # EVICTED or CLOSED_AT_STOP
        self._handle = handle         # a dup of the socket, to shut it down

    def _shut(self):
        try:
            self._handle.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_handle(self):
        try:
            self._handle.close()
        except OSError:
            pass


class Gate:
    """At most ``cap`` unauthenticated connections; evicts at the cap.

    Closing a connection from another thread only shuts its socket down
    (through a duplicate descriptor): the connection's own thread sees its
    read fail, finds :attr:`Slot.closed_reason` set and reports that.
    """

    def __init__(self, cap):
        self.cap = cap
        self._lock = threading.Lock()
        self._slots = {}
        self._seq = itertools.count()

    def __len__(self):
        with self._lock:
            return len(self._slots)

    def admit(self, sock, address):
        """Hold ``sock``; at the cap close another one first.

        :returns: ``(slot, evicted)``; ``evicted`` is the closed slot or
            None.
        """
        slot = Slot(next(self._seq), address, sock.dup())
        with self._lock:
            victim = None
            if len(self._slots) >= self.cap:
                victim = self._victim(address)
                del self._slots[victim.seq]
                victim.closed_reason = EVICTED
            self._slots[slot.seq] = slot
        if victim is not None:
            victim._shut()
        return slot, victim

    def _victim(self, newcomer):
        for stage in (HANDSHAKE, HELLO):
            slots = [s for s in self._slots.values() if s.stage == stage]
            if slots:
                break
        held = collections.Counter(s.address for s in slots)
        held[newcomer] += 1
        return min(slots, key=lambda s: (-held[s.address], s.seq))

    def handshake_done(self, slot):
        with self._lock:
            slot.stage = HELLO

    def authorize(self, slot):
        """The slot's peer is authorized: it leaves the gate for good.

        :returns: False if the slot was closed meanwhile (then the
            connection must not go on).
        """
        with self._lock:
            if slot.closed_reason is not None:
                return False
            self._slots.pop(slot.seq, None)
        slot._close_handle()
        return True

    def release(self, slot):
        """The connection ended before authorization."""
        with self._lock:
            self._slots.pop(slot.seq, None)
        slot._close_handle()

    def close_all(self):
        """The tunnel stops: shut every held connection down."""
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
            for slot in slots:
                slot.closed_reason = CLOSED_AT_STOP
        for slot in slots:
            slot._shut()
        return len(slots)


class Tally:
    """Refused connections: counts, first records, rate-limited log.

    :param log_first: refusals of each reason logged (and reported through
        ``on_event``) one by one; later ones only in summaries.
    :param summary_interval: seconds between two summaries of the refusals
        not logged one by one.
    :param keep: records kept for the outcome.
    :param on_event: called with a dict for each line logged (the tunnel
        prints it as a JSON event), or None.
    """

    def __init__(self, log_first=3, summary_interval=60.0, keep=10,
                 clock=time.monotonic, on_event=None, log=LOG):
        self.log_first = log_first
        self.summary_interval = summary_interval
        self.keep = keep
        self.clock = clock
        self.on_event = on_event
        self.log = log
        self._lock = threading.Lock()
        self.counts = {}
        self.records = []
        self._unlogged = collections.Counter()
        self._last_summary = clock()

    @property
    def total(self):
        with self._lock:
            return sum(self.counts.values())

    def refused(self, label, reason, message, **extra):
        """Count one refused connection; log it if within the limits.

        ``message`` and ``extra`` values may carry peer text: they must be
        escaped with :func:`errors.peer_text` (a TunnelError's message is);
        whatever is not printable is escaped here, never logged raw.
        """
        message = errors.printable(message)
        extra = {k: errors.printable(v) if isinstance(v, str) else v
                 for k, v in extra.items()}
        with self._lock:
            count = self.counts.get(reason, 0) + 1
            self.counts[reason] = count
            if len(self.records) < self.keep:
                record = {'label': label, 'reason': reason,
                          'message': message}
                record.update(extra)
                self.records.append(record)
            one_by_one = count <= self.log_first
            if not one_by_one:
                self._unlogged[reason] += 1
        if one_by_one:
            self.log.warning(
                '%s: refused before authorization (%s): %s%s', label, reason,
                message, ' (further refusals of this reason are only '
                'summarised)' if count == self.log_first else '')
            self._event({'event': 'refused', 'label': label,
                         'reason': reason, 'count': count,
                         'message': message, **extra})
        self.tick()

    def tick(self):
        """Log the summary if one is due (also called by the accept loop)."""
        now = self.clock()
        with self._lock:
            if not self._unlogged or \
                    now - self._last_summary < self.summary_interval:
                return
            unlogged = dict(self._unlogged)
            self._unlogged.clear()
            self._last_summary = now
            counts = dict(self.counts)
        self._log_summary(unlogged, counts)

    def flush(self):
        """Log what is not logged yet (the tunnel is ending)."""
        with self._lock:
            unlogged = dict(self._unlogged)
            self._unlogged.clear()
            self._last_summary = self.clock()
            counts = dict(self.counts)
        if unlogged:
            self._log_summary(unlogged, counts)

    def _log_summary(self, unlogged, counts):
        self.log.warning(
            'refused %d more connection(s) before authorization, not logged '
            'one by one: %s; %d refused in total', sum(unlogged.values()),
            format_counts(unlogged), sum(counts.values()))
        self._event({'event': 'refused_summary',
                     'unlogged': unlogged, 'refused': counts})

    def _event(self, event):
        if self.on_event is not None:
            self.on_event(event)

    def summary(self):
        """One line for an outcome message, or '' without refusals."""
        with self._lock:
            counts = dict(self.counts)
            first = self.records[0] if self.records else None
        if not counts:
            return ''
        return ('%d connection(s) refused before authorization (%s); first: '
                '%s: %s' % (sum(counts.values()), format_counts(counts),
                            first['reason'], first['message']))


def format_counts(counts):
    return ', '.join('%s x%d' % (reason, n)
                     for reason, n in sorted(counts.items()))
