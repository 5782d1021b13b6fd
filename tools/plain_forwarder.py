"""Plain (no crypto) forwarder: the baseline of tools/bench_tunnel.py.

The same path as a tunnel pair (UNIX socket -> TCP -> UNIX socket), copying
with ``recv_into`` into reused 256 KiB buffers, one blocking thread per
direction (plain sockets, unlike SSL objects, allow that). Prints one JSON
line when ready and one with its CPU time and peak RSS when done.

    plain_forwarder.py source --listen PATH --connect HOST:PORT --count N
    plain_forwarder.py destination --port-from P --connect PATH --count N
"""

import argparse
import json
import os
import resource
import socket
import sys
import threading

CHUNK = 256 * 1024


def pump(src, dst):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def join(a, b):
    threads = [threading.Thread(target=pump, args=(a, b)),
               threading.Thread(target=pump, args=(b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.close()
    b.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('side', choices=('source', 'destination'))
    parser.add_argument('--listen')
    parser.add_argument('--port-from', type=int, default=49600)
    parser.add_argument('--connect', required=True)
    parser.add_argument('--count', type=int, default=1)
    args = parser.parse_args()
    if args.side == 'source':
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(args.listen)
        ready = {'event': 'ready', 'sockets': {'memory': args.listen}}
    else:
        lsock = socket.socket()
        port = args.port_from
        while True:
            try:
                lsock.bind(('127.0.0.1', port))
                break
            except OSError:
                port += 1
        ready = {'event': 'ready', 'endpoint': '127.0.0.1:%d' % port}
    lsock.listen(16)
    print(json.dumps(ready), flush=True)
    workers = []
    for _ in range(args.count):
        conn, _ = lsock.accept()
        if args.side == 'source':
            host, port = args.connect.rsplit(':', 1)
            peer = socket.create_connection((host, int(port)))
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(args.connect)
        t = threading.Thread(target=join, args=(conn, peer))
        t.start()
        workers.append(t)
    for t in workers:
        t.join()
    lsock.close()
    if args.side == 'source':
        os.unlink(args.listen)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open('/proc/self/status') as f:
        peak = [int(line.split()[1]) for line in f
                if line.startswith('VmHWM:')][0]
    print(json.dumps({'event': 'outcome', 'status': 'completed',
                      'rusage': {'cpu_user': usage.ru_utime,
                                 'cpu_system': usage.ru_stime,
                                 'max_rss_kib': peak}}),
          flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
