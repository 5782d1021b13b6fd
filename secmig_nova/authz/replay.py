"""Replay stores: remember single-use token ids until the tokens expire.

A ticket's ``jti`` (and later a grant's) may be accepted once. The verifier
asks a :class:`ReplayStore` to remember the id until the token would have
expired anyway; a second presentation within that time is a replay. The
broker keeps its store in its database (shared by its workers); the
in-memory store here serves a single process and the tests.

A store that cannot answer (full, or its database unreachable) raises
:class:`ReplayStoreError`: the token is refused, never accepted unchecked.
"""

import abc
import heapq
import math
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 100000

STORE_FULL = 'replay_store_full'
STORE_UNAVAILABLE = 'replay_store_unavailable'


class ReplayStoreError(Exception):
    """The store cannot tell whether a token id was seen; ``reason`` why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


class ReplayStore(metaclass=abc.ABCMeta):
    """Where single-use token ids are remembered."""

    @abc.abstractmethod
    def check_and_remember(self, key, expires_at):
        """Remember ``key`` until ``expires_at``; tell whether it was new.

        Atomic: of two concurrent calls with the same key, exactly one
        returns True.

        :param key: a string naming the token (issuer and ``jti``).
        :param expires_at: the last POSIX time at which the token can still
            verify (its ``exp`` plus the verifier's leeway): the key is
            remembered through that instant inclusive, and may be
            forgotten after it. Must be a finite number.
        :returns: True if ``key`` was not remembered (first use), False if
            it was (a replay).
        :raises ReplayStoreError: when the store cannot answer.
        """


def expiry(expires_at):
    """``expires_at`` as a float, refusing what could never expire."""
    if isinstance(expires_at, bool) or \
            not isinstance(expires_at, (int, float)):
        raise ValueError('expires_at must be a number')
    value = float(expires_at)
    if not math.isfinite(value):
        raise ValueError('expires_at must be finite, not %r' % expires_at)
    return value


class MemoryReplayStore(ReplayStore):
    """A bounded in-process store; forgets keys once they expire.

    When ``max_entries`` unexpired keys are remembered, a new key is
    refused with :data:`STORE_FULL` rather than evicting one that could
    then be replayed.
    """

    def __init__(self, max_entries=DEFAULT_MAX_ENTRIES, clock=time.time):
        if max_entries < 1:
            raise ValueError('max_entries must be at least 1')
        self.max_entries = max_entries
        self._clock = clock
        self._expiry = {}
        self._heap = []
        self._lock = threading.Lock()

    def __len__(self):
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)

    def _purge(self, now):
        # A key is remembered through its expiry second inclusive: the
        # token verifies while now <= exp + leeway.
        heap = self._heap
        while heap and heap[0][0] < now:
            expires_at, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]

    def check_and_remember(self, key, expires_at):
        if not isinstance(key, str) or not key:
            raise ValueError('replay key must be a non-empty string')
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._expiry:
                LOG.warning('Replay of token %s refused', key)
                return False
            if len(self._expiry) >= self.max_entries:
                raise ReplayStoreError(
                    STORE_FULL,
                    'replay store holds %d unexpired token ids; refusing '
                    'new tokens until some expire' % len(self._expiry))
            expires_at = expiry(expires_at)
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True
