#!/usr/bin/env python3
"""Tunnel benchmark: secmig-tunnel pair against a plain forwarder pair.

Both pipelines run in the same invocation with the same writer and reader:

    writer -> UNIX socket -> [source] -> TCP -> [destination] -> UNIX -> reader

``secure`` uses two ``secmig-tunnel`` processes (TLS 1.3 AES-256-GCM, SHA-256
per direction, checkpoints, signed receipts); ``plain`` uses
tools/plain_forwarder.py (no crypto, same copy discipline). Printed: GiB/s of
each, the ratio secure/plain, CPU seconds per GiB of each side, peak RSS of
each tunnel process, and handshake latency (QEMU connect -> first byte at the
destination QEMU) p50/p95 over --handshakes connections.

    python tools/bench_tunnel.py [--gib 4] [--connections 1] [--runs 1]
                                 [--handshakes 50] [--json]

This is a measurement, not a test: it prints numbers and the targets next to
them and never fails on a missed target.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from secmig_nova.authz import tokens  # noqa: E402
from secmig_nova.trust import ca  # noqa: E402
from secmig_nova.trust import certs  # noqa: E402
from secmig_nova.tunnel import process  # noqa: E402

GIB = 1 << 30
PATTERN = 64 << 20
TARGETS = {'gib_per_s': 1.0, 'ratio': 0.6, 'rss_mib': 64,
           'handshake_p50_ms': 20}


class Pki:
    def __init__(self, root):
        self.src = ca.CADirectory(os.path.join(root, 'cloud-a'))
        self.src.init('cloud-a')
        self.dst = ca.CADirectory(os.path.join(root, 'cloud-b'))
        self.dst.init('cloud-b')
        self.src_host = self.src.issue('host', 'host-a')
        self.dst_host = self.dst.issue('host', 'host-b')
        self.broker = certs.Credentials.load(
            *self.dst.issue('broker', 'broker-b'))

    def grant(self, endpoint, migration_id, connections):
        return tokens.issue_grant(
            self.broker, migration_id=migration_id,
            instance_uuid='00000000-0000-4000-8000-00000000bench',
            src_cloud='cloud-a', src_host='host-a',
            src_fingerprint=certs.Credentials.load(
                *self.src_host).fingerprint,
            dst_host='host-b',
            dst_fingerprint=certs.Credentials.load(
                *self.dst_host).fingerprint,
            dst_endpoint=endpoint, streams={'memory': connections})


class Reader:
    """The destination 'QEMU': drains every connection, notes times."""

    def __init__(self, path, connections):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.first = []
        self.last = []
        self.bytes = 0
        self._lock = threading.Lock()
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept,
                                          args=(connections,), daemon=True)
        self._acceptor.start()

    def _accept(self, n):
        for _ in range(n):
            conn, _ = self.sock.accept()
            t = threading.Thread(target=self._drain, args=(conn,),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _drain(self, conn):
        buf = bytearray(1 << 20)
        total = 0
        first = None
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            if first is None:
                first = time.monotonic()
            total += n
        conn.close()
        with self._lock:
            self.bytes += total
            self.first.append(first)
            self.last.append(time.monotonic())

    def wait(self):
        self._acceptor.join()
        for t in self._threads:
            t.join()
        self.sock.close()


def write(path, size, pattern, started):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    started.append(time.monotonic())
    view = memoryview(pattern)
    left = size
    while left:
        n = min(left, len(view))
        sock.sendall(view[:n])
        left -= n
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


def drive(src_sock, size, connections, pattern, reader):
    started = []
    writers = [threading.Thread(target=write,
                                args=(src_sock, size // connections,
                                      pattern, started))
               for _ in range(connections)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    reader.wait()
    return max(reader.last) - min(started)


def start_tunnels(pki, tmp, migration_id, connections, ports):
    """A destination and a source tunnel; returns (src, dst, paths)."""
    src_sock = os.path.join(tmp, '%s-s.sock' % migration_id)
    dst_sock = os.path.join(tmp, '%s-d.sock' % migration_id)
    common = {'migration_id': migration_id,
              'expect_connections': {'memory': connections}}
    dst = process.TunnelProcess(dict(
        common, side='destination', cloud_id='cloud-b',
        cert_file=pki.dst_host[0], key_file=pki.dst_host[1],
        ca_file=pki.dst.ca_file,
        peer={'cloud_id': 'cloud-a', 'ca_file': pki.src.ca_file},
        sockets={'memory': dst_sock}, port_min=ports, port_max=ports + 99))
    endpoint = dst.wait_ready()['endpoint']
    src = process.TunnelProcess(dict(
        common, side='source', cloud_id='cloud-a',
        cert_file=pki.src_host[0], key_file=pki.src_host[1],
        ca_file=pki.src.ca_file,
        peer={'cloud_id': 'cloud-b', 'ca_file': pki.dst.ca_file},
        sockets={'memory': src_sock},
        grant=pki.grant(endpoint, migration_id, connections)))
    src.wait_ready()
    return src, dst, src_sock, dst_sock


def finish(procs):
    outcomes = {}
    for name, proc in procs:
        rc, outcome = proc.wait(60)
        if rc != 0:
            raise RuntimeError('%s tunnel failed: %s\n%s'
                               % (name, outcome, proc.stderr[-2000:]))
        outcomes[name] = outcome
    return outcomes


def run_secure(pki, tmp, size, connections, pattern, migration_id):
    src, dst, src_sock, dst_sock = start_tunnels(pki, tmp, migration_id,
                                                 connections, 49700)
    reader = Reader(dst_sock, connections)
    seconds = drive(src_sock, size, connections, pattern, reader)
    outcomes = finish((('source', src), ('destination', dst)))
    os.unlink(dst_sock)
    return seconds, reader.bytes, outcomes


def run_plain(tmp, size, connections, pattern):
    src_sock = os.path.join(tmp, 'ps.sock')
    dst_sock = os.path.join(tmp, 'pd.sock')
    script = os.path.join(HERE, 'plain_forwarder.py')
    dst = subprocess.Popen(
        [sys.executable, script, 'destination', '--connect', dst_sock,
         '--count', str(connections)], stdout=subprocess.PIPE, text=True)
    endpoint = json.loads(dst.stdout.readline())['endpoint']
    src = subprocess.Popen(
        [sys.executable, script, 'source', '--listen', src_sock,
         '--connect', endpoint, '--count', str(connections)],
        stdout=subprocess.PIPE, text=True)
    json.loads(src.stdout.readline())
    reader = Reader(dst_sock, connections)
    seconds = drive(src_sock, size, connections, pattern, reader)
    outcomes = {}
    for name, proc in (('source', src), ('destination', dst)):
        outcomes[name] = json.loads(proc.stdout.readline())
        proc.wait(30)
    os.unlink(dst_sock)
    return seconds, reader.bytes, outcomes


def handshakes(pki, tmp, count):
    """Latency of QEMU connect -> first byte at the destination QEMU."""
    src, dst, src_sock, dst_sock = start_tunnels(pki, tmp, 'bench-hs',
                                                 count, 49800)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(dst_sock)
    listener.listen(4)
    latencies = []
    for _ in range(count):
        qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        t0 = time.monotonic()
        qemu.connect(src_sock)
        qemu.sendall(b'Q' * 4096)
        conn, _ = listener.accept()
        conn.recv(1)
        latencies.append(time.monotonic() - t0)
        qemu.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        conn.close()
        while qemu.recv(65536):
            pass
        qemu.close()
    listener.close()
    finish((('source', src), ('destination', dst)))
    return latencies


def percentile(values, pct):
    values = sorted(values)
    k = (len(values) - 1) * pct / 100.0
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(kind, seconds, nbytes, outcomes):
    gib = nbytes / GIB
    res = {'seconds': seconds, 'bytes': nbytes, 'gib_per_s': gib / seconds}
    for side, outcome in outcomes.items():
        usage = outcome['rusage']
        cpu = usage['cpu_user'] + usage['cpu_system']
        res['%s_cpu_s_per_gib' % side] = cpu / gib
        res['%s_rss_mib' % side] = usage['max_rss_kib'] / 1024.0
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gib', type=float, default=4.0,
                        help='GiB moved per run (default 4)')
    parser.add_argument('--connections', type=int, default=1)
    parser.add_argument('--runs', type=int, default=1,
                        help='runs of each pipeline; medians are printed')
    parser.add_argument('--handshakes', type=int, default=50)
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    size = int(args.gib * GIB)
    size -= size % args.connections
    pattern = bytearray(os.urandom(PATTERN))
    tmp = tempfile.mkdtemp(prefix='smb-')
    try:
        pki = Pki(tmp)
        secure, plain = [], []
        for i in range(args.runs):
            # Alternate so drift (thermal, page cache) hits both equally.
            plain.append(summarize('plain', *run_plain(
                tmp, size, args.connections, pattern)))
            secure.append(summarize('secure', *run_secure(
                pki, tmp, size, args.connections, pattern, 'bench-%d' % i)))
        lat = handshakes(pki, tmp, args.handshakes) \
            if args.handshakes else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    result = {
        'gib': size / GIB, 'connections': args.connections,
        'runs': args.runs,
        'secure': {k: med(secure, k) for k in secure[0]},
        'plain': {k: med(plain, k) for k in plain[0]},
    }
    result['ratio_secure_plain'] = (result['secure']['gib_per_s'] /
                                    result['plain']['gib_per_s'])
    if lat:
        result['handshake_ms'] = {'p50': percentile(lat, 50) * 1000,
                                  'p95': percentile(lat, 95) * 1000,
                                  'n': len(lat)}
    result['targets'] = TARGETS
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    s, p = result['secure'], result['plain']
    print('tunnel benchmark: %.2f GiB, %d connection(s), %d run(s) each'
          % (result['gib'], args.connections, args.runs))
    print('  %-8s %8s %14s %14s %10s %10s' % (
        '', 'GiB/s', 'src CPU s/GiB', 'dst CPU s/GiB', 'src RSS', 'dst RSS'))
    for name, r in (('plain', p), ('secure', s)):
        print('  %-8s %8.2f %14.2f %14.2f %8.1fMi %8.1fMi' % (
            name, r['gib_per_s'], r['source_cpu_s_per_gib'],
            r['destination_cpu_s_per_gib'], r['source_rss_mib'],
            r['destination_rss_mib']))
    print('  secure/plain throughput ratio: %.2f   (target >= %.1f)'
          % (result['ratio_secure_plain'], TARGETS['ratio']))
    print('  secure throughput: %.2f GiB/s        (target >= %.1f)'
          % (s['gib_per_s'], TARGETS['gib_per_s']))
    print('  tunnel peak RSS: %.1f / %.1f MiB     (target <= %d)'
          % (s['source_rss_mib'], s['destination_rss_mib'],
             TARGETS['rss_mib']))
    if lat:
        h = result['handshake_ms']
        print('  handshake (connect -> first byte): p50 %.1f ms, p95 %.1f '
              'ms over %d   (target p50 <= %d ms)'
              % (h['p50'], h['p95'], h['n'], TARGETS['handshake_p50_ms']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
