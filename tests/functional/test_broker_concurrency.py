"""Broker concurrency under attack and failure: the security surface.

Two ``secmig-broker`` workers of cloud-b serve the same RPC topic on one
database (RabbitMQ spreads the calls), as an operator scales the broker.
Simultaneous requests must not share the last admission slot, on sqlite
and on MariaDB; a worker killed in the middle of a request stream must not
issue a grant twice, leave a caller without an answer, or leave records
that disagree with what the callers were told. Every attack is bounded in
count and time and stays on loopback.
"""

import threading

from testtools import content

from secmig_nova.authz import tokens
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import models
from secmig_nova.broker import rpcapi
from tests.functional import test_broker_rabbit as base

API_TIMEOUT = base.API_TIMEOUT
BrokerProcess = base.BrokerProcess


class TwoWorkers(base.BrokersOnRabbit):
    """cloud-b's second worker, same topic and database as the first."""

    def start_second_worker(self):
        second = BrokerProcess(self.root, 'b2', self.pki.b, self.pki.a,
                               self.rabbit, self.ks,
                               project_limit=self.project_limit,
                               rpc_timeout=self.rpc_timeout,
                               db_url=self.b.db_url)
        second.start(self.api('cloud-b'))
        self.addCleanup(second.stop)
        return second

    def destination_records(self, mids):
        db = db_api.Database(self.b.db_url)
        self.addCleanup(db.dispose)
        return {mid: db.get_migration(mid, 'destination') for mid in mids}


class TestAtomicAdmission(TwoWorkers):
    """N+k simultaneous grants, two cloud-b workers, one database.

    cloud-b's project limit is N migrations in flight. Its two
    ``secmig-broker`` workers serve the same topic on the same database
    (RabbitMQ hands the forwarded grant requests to both); all requests
    are sent at once. Exactly N are granted, the others refused with
    ``over_concurrency_limit``, and the database holds exactly the N
    grants its callers received.
    """

    project_limit = 3
    extra = 7

    def test_simultaneous_grants_respect_the_limit(self):
        second = self.start_second_worker()
        count = self.project_limit + self.extra
        mids = [self.register() for _ in range(count)]
        tickets = [self.authorize(mid) for mid in mids]
        offsets = (self.b._log_size(), second._log_size())
        barrier = threading.Barrier(count)
        results = {}

        def request(mid, ticket):
            try:
                barrier.wait(60)
                results[mid] = ('granted', self.grant(mid, ticket))
            except rpcapi.BrokerRefused as e:
                results[mid] = ('refused', e.reason)
            except Exception as e:  # noqa: reported by the assertions
                results[mid] = ('error', repr(e))

        threads = [threading.Thread(target=request, args=pair)
                   for pair in zip(mids, tickets)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(API_TIMEOUT + 30)
        self.assertEqual(count, len(results), 'requests without an answer')
        granted = {mid for mid, (kind, _v) in results.items()
                   if kind == 'granted'}
        self.assertEqual(self.project_limit, len(granted), results)
        self.assertEqual(
            {'over_concurrency_limit'},
            {value for kind, value in results.values() if kind != 'granted'},
            results)
        records = self.destination_records(mids)
        self.assertEqual(granted, {mid for mid, r in records.items()
                                   if r['state'] == models.GRANTED})
        for mid in granted:
            self.assertEqual(
                tokens.unverified_claims(results[mid][1])['jti'],
                records[mid]['grant_jti'])
        # Both workers decided some of them: the race was between
        # processes, not only between one worker's threads.
        decided = [
            log.count('forward_grant refused (over_concurrency_limit)') +
            sum(('Migration %s granted' % mid) in log for mid in mids)
            for log in (self.b.log_since(offsets[0]),
                        second.log_since(offsets[1]))]
        self.assertEqual(count, sum(decided), decided)
        self.assertTrue(all(decided), 'one worker decided all: %s'
                        % decided)


class TestAtomicAdmissionMariaDB(TestAtomicAdmission):
    """The same on MariaDB (row lock instead of sqlite's file lock)."""

    database = 'mariadb'


class TestWorkerKilledMidStream(TwoWorkers):
    """SIGKILL one of cloud-b's workers while grants stream in.

    Four callers send four grant requests each, one after the other; after
    the fourth answer the second worker is killed. A request it had taken
    is lost with it: cloud-a's wait for cloud-b ends (``rpc_timeout``) and
    its caller is refused ``peer_unavailable``; the others are served by
    the surviving worker.
    """

    project_limit = 100
    # cloud-a's wait for cloud-b: short, a lost request ends sooner.
    rpc_timeout = 10
    callers = 4
    per_caller = 4
    kill_after = 4

    def test_no_double_grant_no_lost_caller_consistent_records(self):
        second = self.start_second_worker()
        count = self.callers * self.per_caller
        mids = [self.register() for _ in range(count)]
        tickets = dict(zip(mids, (self.authorize(mid) for mid in mids)))
        results = {}
        lock = threading.Lock()
        killed = []

        def caller(chunk):
            for mid in chunk:
                try:
                    result = ('granted', self.grant(mid, tickets[mid]))
                except rpcapi.BrokerRefused as e:
                    result = ('refused', e.reason)
                except Exception as e:  # noqa: reported by the assertions
                    result = ('error', repr(e))
                with lock:
                    results[mid] = result + (bool(killed),)
                    if len(results) >= self.kill_after and not killed:
                        second.proc.kill()
                        killed.append(mid)

        threads = [threading.Thread(target=caller, args=(
            mids[i::self.callers],)) for i in range(self.callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.per_caller * (API_TIMEOUT + 10))
        self.assertTrue(killed, 'the worker was never killed')
        self.addDetail('outcomes', content.text_content(', '.join(
            '%s %s%s' % (r[0], r[1] if r[0] != 'granted' else '',
                         ' (after the kill)' if r[2] else '')
            for r in results.values())))
        self.assertIsNotNone(second.proc.wait(30))
        # Every caller got an answer: a grant or a named refusal.
        self.assertEqual(count, len(results), 'callers without an answer')
        kinds = {mid: r[0] for mid, r in results.items()}
        self.assertEqual(set(), {k for k in kinds.values()} - {
            'granted', 'refused'}, results)
        self.assertEqual(set(), {r[1] for r in results.values()
                                 if r[0] == 'refused'} - {
            'peer_unavailable'}, results)
        granted = {mid for mid, kind in kinds.items() if kind == 'granted'}
        # The survivor carried on after the kill.
        self.assertTrue(any(r[0] == 'granted' and r[2]
                            for r in results.values()), results)
        # Each grant delivered is the one cloud-b recorded, once.
        records = self.destination_records(mids)
        jtis = [tokens.unverified_claims(results[mid][1])['jti']
                for mid in granted]
        self.assertEqual(len(jtis), len(set(jtis)))
        for mid in granted:
            self.assertEqual(
                (models.GRANTED, tokens.unverified_claims(
                    results[mid][1])['jti']),
                (records[mid]['state'], records[mid]['grant_jti']))
        # A refused request was never granted to its caller, and cannot be
        # now: cloud-a recorded it failed, a second try is refused. At
        # cloud-b it is either untouched or granted by the killed worker
        # (its answer died with it): the record says which.
        source = db_api.Database(self.a.db_url)
        self.addCleanup(source.dispose)
        for mid in set(mids) - granted:
            self.assertIn(records[mid]['state'],
                          (models.REQUESTED, models.GRANTED), mid)
            record = source.get_migration(mid, 'source')
            self.assertEqual(models.FAILED, record['state'], mid)
            self.assertIn('peer_unavailable', record['reason'])
            e = self.assertRaises(rpcapi.BrokerRefused, self.grant, mid,
                                  tickets[mid])
            self.assertEqual('bad_state', e.reason)


class TestWorkerKilledMidStreamMariaDB(TestWorkerKilledMidStream):
    """The same on MariaDB: a killed worker's row locks die with it."""

    database = 'mariadb'
