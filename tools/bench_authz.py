"""Benchmark secmig's authorization: policy decisions and tickets.

Starts the functional tests' real Keystone (SQLite, 127.0.0.1, a free port;
see tests/functional/fixtures/keystone.py), then measures:

* policy decision latency of ``secmig:migrate_live`` through oslo.policy and
  the ``keystone_role:`` check, *cold* (cache_ttl = 0: every decision asks
  Keystone) and *warm* (answer in the cache), p50/p95;
* Keystone token validation (the authentication ticket), cold;
* authorization tickets issued and verified per second (ES256, x5c chain
  verified against the trust store, replay store consulted).

Usage, from the repository root::

    .venv/bin/python tools/bench_authz.py [--cold N] [--warm N] [--tickets N]

All traffic stays on the loopback interface; every loop is bounded.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from oslo_config import cfg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from secmig_nova.authz import keystone  # noqa: E402
from secmig_nova.authz import policies  # noqa: E402
from secmig_nova.authz import replay  # noqa: E402
from secmig_nova.authz import tickets  # noqa: E402
from secmig_nova.conf import keystone as keystone_conf  # noqa: E402
from secmig_nova.trust import ca  # noqa: E402
from secmig_nova.trust import certs  # noqa: E402
from secmig_nova.trust import store as trust_store  # noqa: E402
from tests.functional.fixtures import keystone as ks_fixture  # noqa: E402

INSTANCE = '6a1f5d7e-0000-4000-8000-0000000000aa'


def percentile(samples, pct):
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100.0 *
                                               (len(ordered) - 1))))
    return ordered[index]


def summary(samples_s):
    ms = [s * 1000.0 for s in samples_s]
    return {'n': len(ms), 'p50_ms': round(percentile(ms, 50), 3),
            'p95_ms': round(percentile(ms, 95), 3),
            'mean_ms': round(statistics.fmean(ms), 3)}


def enforcer_for(server, tmpdir, cache_ttl):
    path = server.write_service_config(
        os.path.join(tmpdir, 'secmig-%d.conf' % cache_ttl),
        cache_ttl=cache_ttl)
    conf = cfg.ConfigOpts()
    keystone_conf.register_opts(conf)
    conf([], default_config_files=[path])
    return policies.get_enforcer(conf)


def time_decisions(enforcer, creds, target, count):
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        allowed = enforcer.enforce(policies.MIGRATE_LIVE, target, creds)
        samples.append(time.perf_counter() - began)
        if not allowed:
            raise SystemExit('decision unexpectedly refused')
    return samples


def bench_policy(server, cold, warm):
    lab = server.lab
    creds = {'user_id': lab.users['bob'], 'project_id': lab.alpha}
    target = {'project_id': lab.alpha}
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        enf = enforcer_for(server, tmpdir, cache_ttl=0)
        time_decisions(enf, creds, target, 3)  # token, discovery
        results['decision_cold'] = summary(
            time_decisions(enf, creds, target, cold))
        enf = enforcer_for(server, tmpdir, cache_ttl=3600)
        time_decisions(enf, creds, target, 3)
        results['decision_warm'] = summary(
            time_decisions(enf, creds, target, warm))
        client = keystone.get_client(
            enforcer_for(server, tmpdir, cache_ttl=0).conf)
        token = server.token('bob', project_id=lab.alpha)
        client.validate_token(token)
        samples = []
        for _ in range(cold):
            began = time.perf_counter()
            client.validate_token(token)
            samples.append(time.perf_counter() - began)
        results['token_validation_cold'] = summary(samples)
    return results


def bench_tickets(count):
    ca_cert, ca_key = ca.make_ca('cloud-a')
    cert, key = ca.issue(ca_cert, ca_key, 'cloud-a', 'broker', 'broker-a')
    broker = certs.Credentials([cert, ca_cert], key)
    stores = {'cloud-a': trust_store.TrustStore('cloud-a', [ca_cert])}
    replays = replay.MemoryReplayStore(max_entries=count + 1)
    began = time.perf_counter()
    issued = [tickets.issue_ticket(
        broker, user_id='u', project_id='p', roles=['migration_operator'],
        instance_uuid=INSTANCE, src_host='host-a', dst_host='host-b',
        dst_cloud='cloud-b') for _ in range(count)]
    issue_s = time.perf_counter() - began
    began = time.perf_counter()
    for token in issued:
        tickets.verify_ticket(token, stores, audience='cloud-b',
                              replay_store=replays)
    verify_s = time.perf_counter() - began
    return {'tickets': {'n': count,
                        'issued_per_s': round(count / issue_s, 1),
                        'verified_per_s': round(count / verify_s, 1),
                        'token_bytes': len(issued[0])}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cold', type=int, default=100,
                        help='decisions that ask Keystone (default 100)')
    parser.add_argument('--warm', type=int, default=5000,
                        help='decisions answered from the cache')
    parser.add_argument('--tickets', type=int, default=2000,
                        help='tickets to issue and verify')
    args = parser.parse_args(argv)
    began = time.monotonic()
    server = ks_fixture.get_server()
    results = {'keystone_startup_s': round(server.startup_seconds, 1)}
    results.update(bench_policy(server, args.cold, args.warm))
    results.update(bench_tickets(args.tickets))
    results['wall_s'] = round(time.monotonic() - began, 1)
    print(json.dumps(results, indent=2))


if __name__ == '__main__':
    main()
