"""Harness for tunnel tests: fake QEMU ends, a raw peer and a tampering proxy.

Tunnels run as real ``secmig-tunnel`` processes (through
secmig_nova.tunnel.process); "QEMU" on each side is a UNIX socket peer that
writes or reads a known byte stream, so both directions' bytes and digests
can be checked exactly.
"""

import hashlib
import os
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time

import testtools

from secmig_nova.tunnel import frames
from secmig_nova.tunnel import process
from tests.fixtures import pki as pki_fixture

# Upper bound of every wait on an event (a tunnel's ready or outcome line,
# a fake QEMU's end): generous, for a process starting on a busy machine.
# Waits end at the event; only a hung test waits this long.
TIMEOUT = 90

# The tunnels' own deadlines. None of these tests is about them expiring
# (a test that is sets its own, short): they are generous so that a busy
# machine does not turn a slow peer into a timeout.
HANDSHAKE_TIMEOUT = 30.0
LOCAL_ENDPOINT_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
DEADLINE = 240.0


def wait_for(predicate, what, timeout=TIMEOUT, interval=0.02):
    """Poll until ``predicate()`` is true; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('%s: not within %s s' % (what, timeout))
        time.sleep(interval)


class FakeDestinationQemu:
    """Listens where the destination QEMU would; records what arrives.

    ``read_size`` and ``pace`` make it a slow reader (at most ``read_size``
    bytes per read, ``pace`` seconds between reads), so the destination
    tunnel has data queued for it; :meth:`hang_up` then closes the
    connections with that data unread, as a QEMU that gives up does.
    """

    def __init__(self, path, reply=b'', connections=1, read_size=1 << 20,
                 pace=None):
        self.path = path
        self.reply = reply
        self.read_size = read_size
        self.pace = pace
        self.received = []
        self.errors = []
        self.progress = 0      # bytes read so far, all connections
        self._hang_up = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept,
                                          args=(connections,), daemon=True)
        self._acceptor.start()

    def _accept(self, connections):
        for _ in range(connections):
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        sha, total = hashlib.sha256(), 0
        try:
            if self.reply:
                conn.sendall(self.reply)
            while not self._hang_up.is_set():
                chunk = conn.recv(self.read_size)
                if not chunk:
                    break
                sha.update(chunk)
                total += len(chunk)
                self.progress += len(chunk)
                if self.pace and self._hang_up.wait(self.pace):
                    break
        except OSError as e:
            self.errors.append(e)
        finally:
            conn.close()
            self.received.append((total, sha.hexdigest()))

    def hang_up(self):
        """Close every connection at its next read, leaving input unread."""
        self._hang_up.set()

    def wait(self, timeout=TIMEOUT):
        self._acceptor.join(timeout)
        for t in self._threads:
            t.join(timeout)
        return self.received

    def close(self):
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class FakeSourceQemu:
    """Connects to the source tunnel's socket, streams data, reads back.

    ``hold``: a threading.Event the connection waits for, at ``hold_at``
    bytes (a multiple of ``chunk``) before sending the rest, or, without
    ``hold_at``, after the data and before the shutdown (the connection
    stays open until it is set), so the test decides when it goes on.
    """

    def __init__(self, path, data, chunk=256 * 1024, pace=None,
                 hold_at=None, hold=None):
        self.path = path
        self.data = data
        self.chunk = chunk
        self.pace = pace
        self.hold_at = hold_at
        self.hold = hold
        self.returned = bytearray()
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            reader = threading.Thread(target=self._read, args=(sock,),
                                      daemon=True)
            reader.start()
            view = memoryview(self.data)
            for i in range(0, len(view), self.chunk):
                if self.hold is not None and i == self.hold_at:
                    self.hold.wait(TIMEOUT)
                sock.sendall(view[i:i + self.chunk])
                if self.pace:
                    time.sleep(self.pace)
            if self.hold is not None and self.hold_at is None:
                self.hold.wait(TIMEOUT)
            sock.shutdown(socket.SHUT_WR)
            reader.join(TIMEOUT)
        except OSError as e:
            self.error = e
        finally:
            sock.close()

    def _read(self, sock):
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                self.returned += chunk
        except OSError:
            return

    def wait(self, timeout=TIMEOUT):
        self._thread.join(timeout)


class Proxy:
    """A TCP proxy in the tunnel path that can flip a byte or cut.

    ``flip_at``: offset (in the source→destination byte stream) of a byte to
    flip; ``cut_at``: close both sides after this many bytes. ``target``
    may be set after start-up (before the first connection). It counts the
    connections and the bytes it forwarded each way.
    """

    def __init__(self, target=None, flip_at=None, cut_at=None):
        self.target = target
        self.flip_at = flip_at
        self.cut_at = cut_at
        self.forwarded = {'src_to_dst': 0, 'dst_to_src': 0}
        self.connections = 0
        self._count_lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(('127.0.0.1', 0))
        self._sock.listen(8)
        self.endpoint = '127.0.0.1:%d' % self._sock.getsockname()[1]
        self.flipped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream(client)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump,
                             args=(upstream, client, False),
                             daemon=True).start()

    def _connect_upstream(self, client):
        host, port = self.target.rsplit(':', 1)
        return socket.create_connection((host, int(port)))

    def _pump(self, src, dst, forward):
        key = 'src_to_dst' if forward else 'dst_to_src'
        if forward:
            with self._count_lock:
                self.connections += 1
        offset = 0
        try:
            while True:
                chunk = bytearray(src.recv(65536))
                if not chunk:
                    break
                if forward and self.flip_at is not None and \
                        offset <= self.flip_at < offset + len(chunk):
                    chunk[self.flip_at - offset] ^= 0x01
                    self.flipped = True
                if forward and self.cut_at is not None and \
                        offset + len(chunk) >= self.cut_at:
                    chunk = chunk[:self.cut_at - offset]
                    dst.sendall(chunk)
                    self._count(key, len(chunk))
                    break
                dst.sendall(chunk)
                offset += len(chunk)
                self._count(key, len(chunk))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, key, n):
        with self._count_lock:
            self.forwarded[key] += n

    def close(self):
        self._sock.close()


class TunnelTestCase(testtools.TestCase):
    """Starts tunnel processes with the test PKI; cleans everything up."""

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        # Short path: UNIX socket paths are limited to 107 bytes.
        self.dir = tempfile.mkdtemp(prefix='smt-')
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.src_sock = os.path.join(self.dir, 'src.sock')
        self.dst_qemu_sock = os.path.join(self.dir, 'dstq.sock')
        self.procs = []
        self.addCleanup(self._stop_all)

    def _stop_all(self):
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.kill()

    def host_files(self, cloud, name):
        return dict(zip(('cert_file', 'key_file'),
                        getattr(self.pki, cloud).hosts[name]))

    def dst_params(self, host='host-b', crl=False, **over):
        params = {
            'side': 'destination', 'migration_id': 'mig-1',
            'cloud_id': 'cloud-b', 'ca_file': self.pki.b.ca.ca_file,
            'peer': self.pki.a.trust(crl=crl),
            'sockets': {'memory': self.dst_qemu_sock},
            'expect_connections': {'memory': 1},
            'checkpoint_bytes': 1 << 20,
            'handshake_timeout': HANDSHAKE_TIMEOUT,
            'local_endpoint_timeout': LOCAL_ENDPOINT_TIMEOUT,
            'idle_timeout': IDLE_TIMEOUT, 'deadline': DEADLINE,
            # This test's own ledger of used grants (the host's default is
            # shared by every tunnel on it).
            'grant_ledger_dir': os.path.join(self.dir, 'used-grants'),
        }
        params.update(self.host_files('b', host))
        params.update(over)
        return params

    def src_params(self, grant, host='host-a', cloud='a', **over):
        params = {
            'side': 'source', 'migration_id': 'mig-1',
            'cloud_id': getattr(self.pki, cloud).cloud_id,
            'ca_file': getattr(self.pki, cloud).ca.ca_file,
            'peer': self.pki.b.trust(),
            'sockets': {'memory': self.src_sock}, 'grant': grant,
            'expect_connections': {'memory': 1},
            'checkpoint_bytes': 1 << 20,
            'handshake_timeout': HANDSHAKE_TIMEOUT,
            'idle_timeout': IDLE_TIMEOUT, 'deadline': DEADLINE,
        }
        params.update(self.host_files(cloud, host))
        params.update(over)
        return params

    def start(self, params, env=None, debug=False):
        proc = process.TunnelProcess(params, env=env, debug=debug)
        self.procs.append(proc)
        return proc

    def start_destination(self, debug=False, **over):
        proc = self.start(self.dst_params(**over), debug=debug)
        ready = proc.wait_ready(TIMEOUT)
        return proc, ready['endpoint']

    def start_pair(self, grant_kwargs=None, dst=None, src=None, env=None,
                   dst_debug=False):
        dst_proc, endpoint = self.start_destination(debug=dst_debug,
                                                    **(dst or {}))
        grant = self.pki.grant(endpoint, **(grant_kwargs or {}))
        src_proc = self.start(self.src_params(grant, **(src or {})), env=env)
        src_proc.wait_ready(TIMEOUT)
        return dst_proc, src_proc, endpoint

    def assertRefused(self, proc, reason, status=None):
        """The process ends non-zero with ``reason`` in its outcome."""
        rc, outcome = proc.wait(TIMEOUT)
        self.assertIsNotNone(outcome, 'no outcome line; stderr:\n%s'
                             % proc.stderr[-3000:])
        self.assertNotEqual(0, rc, outcome)
        self.assertEqual(reason, outcome.get('reason'),
                         '%s\nstderr:\n%s' % (outcome, proc.stderr[-3000:]))
        if status:
            self.assertEqual(status, outcome['status'])
        return outcome

    def assertRefusedPreauth(self, proc, reason, authorized=0, **fields):
        """The destination ``proc`` refused a connection before authorizing it.

        Such a refusal never ends the tunnel nor becomes its reason: wait
        for the ``refused`` event, stop the tunnel, and find the refusal
        in the outcome's ``refused`` counts and records (with ``fields``)
        and its message, beside the tunnel's own status (stopped).
        :returns: ``(outcome, record)``.
        """
        event = proc.wait_event(
            lambda e: e.get('event') == 'refused' and
            e.get('reason') == reason, TIMEOUT)
        self.assertIsNotNone(event, 'no refused event for %s: %s\n%s' % (
            reason, list(proc.events), proc.stderr[-3000:]))
        rc, outcome = proc.terminate(TIMEOUT)
        self.assertIsNotNone(outcome, proc.stderr[-3000:])
        detail = '%s\nstderr:\n%s' % (outcome, proc.stderr[-3000:])
        self.assertNotEqual(0, rc, detail)
        self.assertEqual('aborted', outcome['status'], detail)
        self.assertEqual('terminated', outcome['reason'], detail)
        self.assertEqual(authorized, len(outcome['connections']), detail)
        self.assertGreaterEqual(outcome['refused'].get(reason, 0), 1, detail)
        self.assertIn('%s x' % reason, outcome['message'])
        record = [r for r in outcome['refused_connections']
                  if r['reason'] == reason][0]
        for name, value in fields.items():
            self.assertEqual(value, record.get(name), detail)
        return outcome, record

    def assertCompleted(self, proc):
        rc, outcome = proc.wait(TIMEOUT)
        self.assertIsNotNone(outcome, proc.stderr[-3000:])
        self.assertEqual(0, rc, '%s\n%s' % (outcome, proc.stderr[-3000:]))
        self.assertEqual('completed', outcome['status'])
        return outcome

    def assertNoSocketLeft(self):
        self.assertFalse(os.path.exists(self.src_sock),
                         'source tunnel left its socket file behind')

    # -- a raw source, to probe the destination's own checks ------------

    def raw_client(self, endpoint, cloud='a', host='host-a', tls12=False,
                   host_files=None, source_address=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        files = host_files or getattr(self.pki, cloud).hosts[host]
        ctx.load_cert_chain(*files)
        h, port = endpoint.rsplit(':', 1)
        raw = socket.create_connection(
            (h, int(port)), timeout=TIMEOUT,
            source_address=(source_address, 0) if source_address else None)
        return ctx.wrap_socket(raw)

    def hello(self, grant, index=0, kind='memory', migration_id='mig-1'):
        return frames.push_hello(frames.Hello(
            version=frames.PROTOCOL_VERSION,
            kind=frames.StreamKind.from_label(kind), conn_index=index,
            migration_id=migration_id, grant=grant))

    @staticmethod
    def read_frame(sock):
        header = b''
        while len(header) < 5:
            chunk = sock.recv(5 - len(header))
            if not chunk:
                return None, None
            header += chunk
        ftype, length = struct.unpack('>BI', header)
        payload = b''
        while len(payload) < length:
            chunk = sock.recv(length - len(payload))
            if not chunk:
                break
            payload += chunk
        return ftype, payload
