#!/usr/bin/env python3
"""Live-migration benchmark on the real-libvirt lab: plain, native TLS, secmig.

Not a test: it times real migrations of one lab guest between the lab's two
hosts (tools/lab) and prints medians and ratios. For each guest mode
(``normal``: the lab guest, ~2 MiB/s dirtied; ``hard``: the same image
with ``secmig.hog_mib=64``, a loop rewriting 64 MiB without pause) one guest
is booted and migrated back and forth, ``--rounds`` times per kind,
interleaved (the kinds' order rotates every round so drift on a shared
machine hits them alike):

* ``plain``: libvirt p2p over loopback TCP, no encryption (the baseline);
* ``tls``: the same with QEMU's native TLS (``VIR_MIGRATE_TLS``; x509
  credentials from the lab's own CA in each host's
  ``/etc/libvirt/migrate-tls``, ``migrate_tls_x509_cert_dir``);
* ``secure``: through a source and a destination ``secmig-tunnel``, each
  handed to the host's spare tunnel process, started and loaded ahead (the
  driver's default, ``[secmig] tunnel_spare``; the benchmark waits until
  the spares have loaded before timing, as they have long before the next
  migration on a compute host);
* ``secure-cold`` (not run by default; ``--kinds ...,secure-cold``): the
  same with a fresh process per tunnel, started when the migration begins.

Per migration: ``time`` is the wall time of libvirt's migrateToURI3 (what
the compute manager waits for), ``downtime`` libvirt's completed-job
downtime, ``bytes`` the guest stream QEMU sent (libvirt's
``memory_processed``), ``job`` libvirt's completed-job ``time_elapsed``
(shorter than ``time``, which also covers what libvirt does outside its
job timer). For ``secure`` also ``setup``:
starting both tunnels and minting the grant before libvirt is called (in
nova that happens in pre_live_migration), and ``wire``: the tunnel's
byte count. Every
migration is checked: the guest's heartbeat continues on the destination.

    sudo .venv/bin/python tools/bench_migration.py [--rounds 5]
        [--modes normal,hard] [--parallel N] [--json results.json]

Needs root and the lab (tools/lab/README.md). Targets (issue 6):
secure/plain <= 1.10 in time and downtime, secure/tls <= 1.00.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.lab import lab as lab_mod  # noqa: E402

KINDS = ('plain', 'tls', 'secure', 'secure-cold')
DEFAULT_KINDS = ('plain', 'tls', 'secure')
MODES = {'normal': 0, 'hard': lab_mod.HARD_HOG_MIB}
TARGETS = {('secure', 'plain'): 1.10, ('secure', 'tls'): 1.00}
# The names the ratios print and --json writes.
LABELS = {'plain': 'plain', 'tls': 'native-tls', 'secure': 'secmig',
          'secure-cold': 'secmig-cold'}
GIB = 1 << 30
HOG_RE = re.compile(rb'SECMIG-HOG-PASS (\d+)')
MIB = 1 << 20


def migrate(the_lab, kind, src, dst, name, parallel=0):
    if kind.startswith('secure'):
        the_lab.tunnel_spares = kind == 'secure'
        if the_lab.tunnel_spares:
            the_lab.wait_spares()
        return the_lab.migrate_secure(src, dst, name, parallel=parallel)
    return the_lab.migrate_plain(src, dst, name, tls=(kind == 'tls'),
                                 parallel=parallel)


def sample(result, kind):
    job = result.job
    row = {'kind': kind, 'src': result.src.name,
           'dst': result.dst.name, 'time_s': round(result.seconds, 4),
           'downtime_ms': job.get('downtime'),
           'bytes': job.get('memory_processed', job.get('data_processed')),
           'job_ms': job.get('time_elapsed')}
    if result.kind == 'secure':
        row['setup_s'] = round(result.setup_seconds, 4)
        # Whether each side's process was a spare loaded ahead.
        row['spare'] = {side: proc.spare is not None
                        for side, proc in result.procs.items()}
        row['wire_bytes'] = result.bytes
        cpu = 0.0
        for side, (rc, outcome) in result.tunnels.items():
            if rc != 0 or outcome['status'] != 'completed':
                raise lab_mod.LabError('%s tunnel did not complete: %s'
                                       % (side, outcome))
            used = _cpu(outcome.get('rusage'))
            cpu += used
            # Carrying the stream: the CPU after the ready line, per GiB
            # of guest stream this side carried.
            streaming = used - _cpu(
                (result.ready.get(side) or {}).get('rusage'))
            row['%s_stream_cpu_s' % side] = round(streaming, 3)
            if result.bytes:
                row['%s_cpu_s_per_gib' % side] = round(
                    streaming / (result.bytes / GIB), 3)
        # CPU seconds both tunnel processes used, start-up included (on a
        # 2-core machine they compete with both QEMUs).
        row['tunnel_cpu_s'] = round(cpu, 3)
    return row


def _cpu(usage):
    usage = usage or {}
    return usage.get('cpu_user', 0) + usage.get('cpu_system', 0)


def dirty_rate(the_lab, host, name, hog_mib, seconds=4.0):
    """MiB/s the guest's hog loop rewrites (hard mode), from its log."""
    if not hog_mib:
        return None
    before = HOG_RE.findall(the_lab.serial(host, name))
    t0 = time.monotonic()
    time.sleep(seconds)
    after = HOG_RE.findall(the_lab.serial(host, name))
    if not before or not after:
        return None
    passes = int(after[-1]) - int(before[-1])
    return round(passes * hog_mib / (time.monotonic() - t0), 1)


def run_mode(the_lab, mode, rounds, kinds, out, parallel=0,
             memory_mib=256):
    a, b = the_lab.host('a'), the_lab.host('b')
    name = 'bench-%s' % mode
    hog = MODES[mode]
    the_lab.destroy_guest(name)
    the_lab.start_guest(a, name, hog_mib=hog, memory_mib=memory_mib)
    the_lab.wait_heartbeat(a, name, above=2, timeout=120)
    where, other = a, b
    rows = []
    rate = dirty_rate(the_lab, where, name, hog)
    # One of each first (not counted): warms caches, proves each kind
    # works (native TLS included) before anything is timed.
    plan = [('warmup', k) for k in kinds]
    for i in range(rounds):
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
        plan += [(i, k) for k in order]
    for rnd, kind in plan:
        before = the_lab.heartbeats(where, name)[-1]
        mark = len(the_lab.serial(other, name))
        result = migrate(the_lab, kind, where, other, name, parallel)
        row = sample(result, kind)
        # The guest lives on: a heartbeat after the last one on the source.
        row['heartbeat'] = [before, the_lab.wait_heartbeat(
            other, name, above=before, timeout=30, since=mark)]
        # The machine may be shared: keep the load next to each sample.
        row.update(mode=mode, round=rnd, load1=round(os.getloadavg()[0], 2))
        out.write(json.dumps(row) + '\n')
        out.flush()
        if rnd != 'warmup':
            rows.append(row)
        where, other = other, where
    the_lab.destroy_guest(name)
    return rows, rate


def median(rows, kind, key):
    values = [r[key] for r in rows if r['kind'] == kind
              and r.get(key) is not None]
    return statistics.median(values) if values else None


def report(mode, rows, rate, kinds, rounds):
    lines = ['', '== guest mode: %s (%s) ==' % (
        mode, 'hog loop rewriting %d MiB, measured %s MiB/s'
        % (MODES[mode], rate) if MODES[mode]
        else '1 MiB rewritten per 0.5 s heartbeat')]
    loads = [r['load1'] for r in rows]
    lines.append('1-min load average at the timed samples: min %.2f, '
                 'median %.2f, max %.2f' % (min(loads),
                                            statistics.median(loads),
                                            max(loads)))
    lines.append('%-11s %3s %10s %12s %11s %10s %9s %10s' % (
        'kind', 'n', 'time s', 'downtime ms', 'bytes MiB', 'job ms',
        'setup s', 'tun cpu s'))
    med = {}
    for kind in kinds:
        med[kind] = {key: median(rows, kind, key) for key in
                     ('time_s', 'downtime_ms', 'bytes', 'job_ms', 'setup_s',
                      'tunnel_cpu_s', 'source_cpu_s_per_gib',
                      'destination_cpu_s_per_gib')}
        m = med[kind]
        n = sum(1 for r in rows if r['kind'] == kind)
        lines.append('%-11s %3d %10.3f %12.0f %11.1f %10.0f %9s %10s' % (
            kind, n, m['time_s'], m['downtime_ms'], m['bytes'] / MIB,
            m['job_ms'], '-' if m['setup_s'] is None
            else '%.3f' % m['setup_s'], '-' if m['tunnel_cpu_s'] is None
            else '%.3f' % m['tunnel_cpu_s']))
    ratios = {}
    for (num, den), target in TARGETS.items():
        if num not in med or den not in med:
            continue
        for key, label in (('time_s', 'time'), ('downtime_ms', 'downtime'),
                           ('bytes', 'bytes'), ('job_ms', 'job')):
            if not med[den][key]:
                continue
            ratio = med[num][key] / med[den][key]
            name = '%s/%s %s' % (LABELS[num], LABELS[den], label)
            ratios[name] = ratio
            verdict = ''
            if label in ('time', 'downtime'):
                verdict = ('meets' if ratio <= target else 'MISSES') + \
                    ' target <= %.2f' % target
            lines.append('  %-28s = %.3f  %s' % (name, ratio, verdict))
    if 'secure' in med and 'secure-cold' in med:
        for key, label in (('setup_s', 'setup'), ('time_s', 'time'),
                           ('tunnel_cpu_s', 'tunnel cpu')):
            if med['secure-cold'][key]:
                ratio = med['secure'][key] / med['secure-cold'][key]
                name = 'secmig/secmig-cold %s' % label
                ratios[name] = ratio
                lines.append('  %-28s = %.3f  (spare tunnel processes vs '
                             'a fresh one per tunnel)' % (name, ratio))
    secure = med.get('secure') or med.get('secure-cold')
    if secure:
        lines.append('  secmig setup (median)        = %.0f ms; tunnel CPU '
                     'while streaming: source %s, destination %s CPU-s/GiB'
                     % (secure['setup_s'] * 1000,
                        secure['source_cpu_s_per_gib'],
                        secure['destination_cpu_s_per_gib']))
    return '\n'.join(lines), med, ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=5,
                        help='timed migrations per kind and mode (>= 5)')
    parser.add_argument('--modes', default='normal,hard')
    parser.add_argument('--kinds', default=','.join(DEFAULT_KINDS),
                        help='of %s' % ', '.join(KINDS))
    parser.add_argument('--json', help='write all samples and medians here')
    parser.add_argument('--parallel', type=int, default=0,
                        help='QEMU multifd channels for every kind (0: one '
                             'connection); secmig: one tunnel connection '
                             'per channel')
    parser.add_argument('--guest-mib', type=int, default=256,
                        help='guest RAM in MiB (the lab guest: 256)')
    parser.add_argument('--keep', action='store_true',
                        help='use .lab/ and leave the hosts running')
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(',') if m]
    kinds = [k for k in args.kinds.split(',') if k]
    for m in modes:
        if m not in MODES:
            parser.error('unknown mode %s' % m)
    for k in kinds:
        if k not in KINDS:
            parser.error('unknown kind %s' % k)
    the_lab = lab_mod.Lab() if args.keep else lab_mod.Lab.temporary()
    summary = {'rounds': args.rounds, 'parallel': args.parallel,
               'guest_mib': args.guest_mib,
               'modes': {},
               'loadavg_before': os.getloadavg(), 'cpus': os.cpu_count()}
    texts = []
    try:
        the_lab.start()
        print('# samples (one JSON line per migration; warmup not counted)',
              flush=True)
        for mode in modes:
            rows, rate = run_mode(the_lab, mode, args.rounds, kinds,
                                  sys.stdout, args.parallel,
                                  memory_mib=args.guest_mib)
            text, med, ratios = report(mode, rows, rate, kinds, args.rounds)
            texts.append(text)
            secure = med.get('secure') or med.get('secure-cold') or {}
            summary['modes'][mode] = {
                'samples': rows, 'medians': med, 'ratios': ratios,
                'dirty_mib_s': rate,
                'setup_ms': (secure['setup_s'] * 1000
                             if secure.get('setup_s') is not None else None),
                'tunnel_cpu_s_per_gib': {
                    side: secure.get('%s_cpu_s_per_gib' % side)
                    for side in ('source', 'destination')}}
    finally:
        if not args.keep:
            the_lab.teardown()
    summary['loadavg_after'] = os.getloadavg()
    if args.parallel > 1:
        print('\nmultifd: %d data channels per migration, every kind'
              % args.parallel)
    print('\n'.join(texts))
    print('\nload average before %s, after %s, %d CPUs' % (
        ' '.join('%.2f' % x for x in summary['loadavg_before']),
        ' '.join('%.2f' % x for x in summary['loadavg_after']),
        summary['cpus']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=1, default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
