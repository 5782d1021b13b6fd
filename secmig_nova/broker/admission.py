"""Admission control: how many migrations a peer or project may start.

Limits are applied per key (a peer cloud, a project): a token bucket for the
rate of new requests and a counter of migrations in flight. A request takes
a slot only after it has been authenticated and authorized, so a flood of
invalid requests (bad signatures, replays, missing roles) spends none of a
peer's budget and cannot starve its valid requests; refused requests are
counted separately for the logs. Only signed claims are ever used: capacity
or resource statements from a peer that are not inside a verified envelope
are never looked at.
"""

import dataclasses
import threading
import time

OVER_RATE = 'over_rate_limit'
OVER_CONCURRENCY = 'over_concurrency_limit'


class AdmissionError(Exception):
    """A limit was reached; ``reason`` names which."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


@dataclasses.dataclass
class Limit:
    """Limits of one key; 0 means unlimited.

    ``rate`` requests per ``per`` seconds (burst = rate), and at most
    ``concurrent`` admitted and not yet released.
    """

    rate: int = 0
    per: float = 60.0
    concurrent: int = 0


class _Bucket:
    def __init__(self, limit, now):
        self.limit = limit
        self.tokens = float(limit.rate)
        self.stamp = now
        self.in_flight = 0


class Admission:
    """Thread-safe limits for many keys; injectable clock for tests."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = {}
        self.refused = {}

    def _bucket(self, key, limit, now):
        bucket = self._buckets.get(key)
        if bucket is None or bucket.limit != limit:
            old = bucket
            bucket = _Bucket(limit, now)
            if old is not None:
                bucket.in_flight = old.in_flight
            self._buckets[key] = bucket
        return bucket

    def admit(self, limits):
        """Take one slot under every ``(key, Limit)`` or none of them.

        :returns: a ticket to pass to :meth:`release`.
        :raises AdmissionError: naming the first limit that is full.
        """
        now = self._clock()
        with self._lock:
            buckets = []
            for key, limit in limits:
                bucket = self._bucket(key, limit, now)
                if limit.rate:
                    elapsed = now - bucket.stamp
                    bucket.stamp = now
                    bucket.tokens = min(
                        float(limit.rate),
                        bucket.tokens + elapsed * limit.rate / limit.per)
                    if bucket.tokens < 1.0:
                        self._count_refusal(key)
                        raise AdmissionError(
                            OVER_RATE, '%s is over its rate limit of %d '
                            'migrations per %.0f s' % (key, limit.rate,
                                                       limit.per))
                if limit.concurrent and \
                        bucket.in_flight >= limit.concurrent:
                    self._count_refusal(key)
                    raise AdmissionError(
                        OVER_CONCURRENCY, '%s already has %d migrations in '
                        'flight (limit %d)' % (key, bucket.in_flight,
                                               limit.concurrent))
                buckets.append(bucket)
            for bucket in buckets:
                if bucket.limit.rate:
                    bucket.tokens -= 1.0
                bucket.in_flight += 1
            return tuple(key for key, _limit in limits)

    def release(self, keys):
        """Give back the in-flight slots taken by :meth:`admit`."""
        with self._lock:
            for key in keys:
                bucket = self._buckets.get(key)
                if bucket is not None and bucket.in_flight > 0:
                    bucket.in_flight -= 1

    def in_flight(self, key):
        with self._lock:
            bucket = self._buckets.get(key)
            return bucket.in_flight if bucket else 0

    def _count_refusal(self, key):
        self.refused[key] = self.refused.get(key, 0) + 1
