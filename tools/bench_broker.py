#!/usr/bin/env python3
"""Broker benchmark on a real RabbitMQ with a real Keystone.

Starts a private RabbitMQ node and Keystone (the test fixtures), and two
clouds' ``secmig-broker`` processes (one vhost and sqlite database each).
Measures, from a compute host's point of view:

* the authorize + grant round trip (source broker -> Keystone roles ->
  ticket; source broker -> destination broker -> grant), p50/p95 over
  ``--flows`` sequential migrations (registration not included);
* sustained grants per second with ``--threads`` concurrent hosts, first
  with one destination broker worker, then with two workers on the same
  topic and database.

    python tools/bench_broker.py [--flows 100] [--seconds 15] [--json]

A measurement, not a test.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import oslo_messaging as messaging  # noqa: E402

from secmig_nova.broker import rpcapi  # noqa: E402
from tests.fixtures import brokers as broker_fixtures  # noqa: E402
from tests.fixtures import pki as pki_fixture  # noqa: E402
from tests.functional.fixtures import broker_process  # noqa: E402
from tests.functional.fixtures import rabbitmq  # noqa: E402


def percentile(values, pct):
    values = sorted(values)
    k = (len(values) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Bench:
    def __init__(self):
        self.pki = pki_fixture.get()
        self.rabbit = rabbitmq.get_server()
        self.ks = broker_process.Keystone()
        self.root = tempfile.mkdtemp(prefix='smbb-')
        conf = broker_fixtures.make_conf()
        self.transports = {c: messaging.get_rpc_transport(
            conf, url=self.rabbit.vhost(c)) for c in ('cloud-a', 'cloud-b')}
        limits = dict(project_limit=0, peer_limit=0, project_rate=0)
        self.a = broker_process.BrokerProcess(
            self.root, 'a', self.pki.a, self.pki.b, self.rabbit, self.ks,
            **limits)
        self.b = broker_process.BrokerProcess(
            self.root, 'b', self.pki.b, self.pki.a, self.rabbit, self.ks,
            **limits)
        self.b2 = None
        self.b.start(self.api('cloud-b'))
        self.a.start(self.api('cloud-a'))

    def api(self, cloud):
        return rpcapi.BrokerAPI(self.transports[cloud], timeout=30)

    def hosts(self):
        return (rpcapi.HostClient(self.api('cloud-a'),
                                  self.pki.a.credentials('host-a')),
                rpcapi.HostClient(self.api('cloud-b'),
                                  self.pki.b.credentials('host-b')))

    def flow(self, src, dst):
        mid = str(uuid.uuid4())
        dst.register_incoming(mid, '127.0.0.1:49400', {'memory': 1},
                              broker_process.INSTANCE)
        t0 = time.perf_counter()
        ticket = src.authorize_migration(
            mid, broker_process.INSTANCE, 'host-b', 'cloud-b',
            user_id=self.ks.operator, project_id=self.ks.alpha)['ticket']
        src.request_grant(mid, ticket, {'memory': 1})
        return time.perf_counter() - t0

    def round_trips(self, flows):
        src, dst = self.hosts()
        self.flow(src, dst)      # warm the role cache and connections
        return [self.flow(src, dst) for _ in range(flows)]

    def sustained(self, seconds, threads):
        done = []
        errors = []
        stop = time.monotonic() + seconds

        def worker():
            src, dst = self.hosts()
            while time.monotonic() < stop:
                try:
                    self.flow(src, dst)
                    done.append(1)
                except Exception as e:  # noqa: count, keep going
                    errors.append(repr(e))
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return len(done) / (time.monotonic() - t0), errors

    def add_worker(self):
        self.b2 = broker_process.BrokerProcess(
            self.root, 'b2', self.pki.b, self.pki.a, self.rabbit, self.ks,
            project_limit=0, peer_limit=0, project_rate=0)
        self.b2.start(self.api('cloud-b'))

    def close(self):
        for proc in (self.a, self.b, self.b2):
            if proc is not None:
                proc.stop()
        for t in self.transports.values():
            t.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--flows', type=int, default=100)
    parser.add_argument('--seconds', type=float, default=15.0)
    parser.add_argument('--threads', type=int, default=4)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    bench = Bench()
    try:
        rt = bench.round_trips(args.flows)
        one, err1 = bench.sustained(args.seconds, args.threads)
        bench.add_worker()
        two, err2 = bench.sustained(args.seconds, args.threads)
    finally:
        bench.close()
    result = {
        'round_trip_ms': {'p50': percentile(rt, 50) * 1000,
                          'p95': percentile(rt, 95) * 1000,
                          'mean': statistics.mean(rt) * 1000,
                          'n': len(rt)},
        'grants_per_s': {'one_worker': one, 'two_workers': two,
                         'threads': args.threads,
                         'seconds': args.seconds},
        'errors': err1 + err2,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = result['round_trip_ms']
    print('broker benchmark (RabbitMQ, Keystone, two clouds)')
    print('  authorize + grant round trip: p50 %.1f ms, p95 %.1f ms '
          '(mean %.1f, n=%d)' % (r['p50'], r['p95'], r['mean'], r['n']))
    print('  sustained grants/s with %d client threads: %.1f (one '
          'destination worker), %.1f (two workers)'
          % (args.threads, one, two))
    if result['errors']:
        print('  errors: %d, first: %s'
              % (len(result['errors']), result['errors'][0]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
