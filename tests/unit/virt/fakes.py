"""Fake ``secmig-tunnel`` processes that record their parameters.

nova's fakelibvirt cannot stream, so the driver and orchestration tests run
:class:`FakeTunnels` instead of real tunnel processes. The fakes validate
their parameters with the real parser (secmig_nova/tunnel/params.py), leave
real UNIX socket files on the source, removed when they report an outcome
(as a tunnel does on exit) and left behind when killed, and,
when a migration "completes", produce per-connection receipts signed with
the very certificates the parameters name, so receipt verification and the
broker's ``record_receipt`` run for real.
"""

import hashlib
import itertools
import json
import os
import socket
import threading
import time

from secmig_nova.authz import tokens
from secmig_nova.trust import certs
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import params as tunnel_params
from secmig_nova.tunnel import process
from tests.fixtures import receipts

_PIDS = itertools.count(40000)


def _totals(label):
    data = label.encode()
    return {'bytes': 4096 + len(data),
            'sha256': hashlib.sha256(data).hexdigest()}


class FakeTunnels:
    """The fake tunnel processes of a test, and how they should behave.

    :attr fail: ``{side: (reason, message)}``: that side's tunnel fails
        mid-stream.
    :attr refuse_start: ``{side: (reason, message)}``: that side's tunnel
        refuses to start (no ready line).
    :attr tamper: a callable ``(connection dict) -> None`` applied to the
        receipts of a completed migration.
    :attr ignore_sigterm: ``terminate`` raises (the supervisor must kill).
    """

    def __init__(self):
        self.started = []
        self.fail = {}
        self.refuse_start = {}
        self.tamper = None
        self.ignore_sigterm = False
        # Sides whose tunnel keeps running until stopped (a stream libvirt
        # cancelled), and sides whose tunnel dies without an outcome
        # (SIGKILLed by someone else).
        self.keep_running = set()
        self.vanish = set()
        self.destination_credentials = None
        self.endpoint_port = None
        self._results = {}
        self._lock = threading.Lock()
        # How often a tunnel's end asked for the next spare (SpareTunnels).
        self.replenished = 0

    def replenish(self):
        self.replenished += 1

    def __call__(self, params, **_kwargs):
        tunnel = FakeTunnelProcess(self, params)
        with self._lock:
            self.started.append(tunnel)
        return tunnel

    def of(self, side, migration_id=None):
        """Tunnels started for one side (and migration)."""
        return [t for t in self.started if t.params['side'] == side and
                (migration_id is None or
                 t.params['migration_id'] == migration_id)]

    def results(self, migration_id):
        return self._results.get(migration_id)

    def _complete(self, source):
        """Connections of a completed migration, receipts signed."""
        mid = source.params['migration_id']
        with self._lock:
            if mid in self._results:
                return self._results[mid]
        grant = tokens.unverified_claims(source.params['grant'])
        src = certs.Credentials.load(source.params['cert_file'],
                                     source.params['key_file'])
        dests = self.of('destination', mid)
        if dests:
            dst = certs.Credentials.load(dests[-1].params['cert_file'],
                                         dests[-1].params['key_file'])
        else:
            dst = self.destination_credentials
        connections = []
        now = time.time()
        for kind in sorted(grant['streams']):
            for index in range(grant['streams'][kind]):
                label = '%s/%s/%d' % (mid, kind, index)
                claims = {
                    'migration_id': mid,
                    'instance_uuid': grant['instance_uuid'],
                    'grant_jti': grant['jti'], 'stream_kind': kind,
                    'connection_index': index,
                    'src_to_dst': _totals(label + '>'),
                    'dst_to_src': _totals(label + '<'),
                    'started_at': round(now - 1, 3),
                    'ended_at': round(now, 3),
                    'src_fingerprint': src.fingerprint,
                    'dst_fingerprint': dst.fingerprint,
                    'src_cloud': grant['src_cloud'],
                    'dst_cloud': grant['dst_cloud'],
                    'tls_version': 'TLSv1.3',
                    'tls_cipher': 'TLS_AES_256_GCM_SHA384'}
                src_receipt, dst_receipt = receipts.sign_pair(src, dst,
                                                              claims)
                conn = {'kind': kind, 'index': index, 'status': 'completed',
                        'src_to_dst': claims['src_to_dst'],
                        'dst_to_src': claims['dst_to_src'],
                        'tls_version': claims['tls_version'],
                        'tls_cipher': claims['tls_cipher'],
                        'src_fingerprint': src.fingerprint,
                        'dst_fingerprint': dst.fingerprint,
                        'started_at': claims['started_at'],
                        'ended_at': claims['ended_at'],
                        'source_receipt': src_receipt,
                        'destination_receipt': dst_receipt}
                if self.tamper is not None:
                    self.tamper(conn)
                connections.append(conn)
        with self._lock:
            self._results.setdefault(mid, connections)
            return self._results[mid]


class FakeTunnelProcess:
    """Stands in for :class:`secmig_nova.tunnel.process.TunnelProcess`."""

    def __init__(self, world, params):
        self.world = world
        # A copy through JSON, exactly what the real process would read.
        self.params = json.loads(json.dumps(params))
        self.side = self.params['side']
        self.migration_id = self.params['migration_id']
        self.pid = next(_PIDS)
        self.signals = []
        self.killed = False
        self.ready = None
        self.outcome = None
        self.stderr = ''
        self.invalid = None
        try:
            self.parsed = tunnel_params.from_dict(self.params)
        except errors.TunnelError as e:
            self.parsed = None
            self.invalid = e

    # -- what TunnelProcess offers ----------------------------------------

    def wait_ready(self, timeout=30.0):
        refusal = self.world.refuse_start.get(self.side)
        if self.invalid is not None:
            refusal = (self.invalid.reason, str(self.invalid.args[0]))
        if refusal:
            self.outcome = {'event': 'outcome', 'side': self.side,
                            'status': 'refused', 'reason': refusal[0],
                            'message': refusal[1], 'connections': []}
            raise process.TunnelProcessError(
                'tunnel did not become ready: %s' % refusal[1], self.outcome)
        if self.side == 'source':
            for path in self.params['sockets'].values():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(path)
                sock.close()
            self.ready = {'event': 'ready', 'side': 'source',
                          'sockets': dict(self.params['sockets']),
                          'pid': self.pid}
        else:
            port = self.world.endpoint_port or self.params.get(
                'port_min', 49400)
            self.ready = {'event': 'ready', 'side': 'destination',
                          'endpoint': '%s:%d' % (
                              self.params.get('listen_host', '127.0.0.1'),
                              port),
                          'pid': self.pid}
        return self.ready

    def wait(self, timeout=None):
        """The source ends by itself: completed unless told to fail."""
        if self.outcome is not None:
            return self._rc(), self.outcome
        if self.side in self.world.vanish:
            self.killed = True
            self._exit()
            return -9, None
        if self.side == 'destination' or self.side in self.world.keep_running:
            raise process.TunnelProcessError('tunnel still running after %s '
                                             's' % timeout)
        failure = self.world.fail.get(self.side)
        if failure:
            self.outcome = self._outcome('failed', *failure)
        else:
            self.outcome = self._outcome(
                'completed', connections=self.world._complete(self))
        self._exit()
        return self._rc(), self.outcome

    def terminate(self, timeout=30.0):
        self.signals.append('SIGTERM')
        if self.world.ignore_sigterm:
            raise process.TunnelProcessError('tunnel still running after '
                                             '%s s' % timeout)
        return self._stop()

    def kill(self):
        """SIGKILL: no outcome, the sockets stay behind."""
        self.signals.append('SIGKILL')
        self.killed = True
        return -9, None

    def _exit(self):
        # A tunnel removes its sockets before it prints its outcome.
        for path in self.sockets if self.side == 'source' else ():
            if os.path.exists(path):
                os.unlink(path)

    # -- helpers -------------------------------------------------------------

    def _stop(self):
        if self.outcome is None:
            failure = self.world.fail.get(self.side)
            done = self.world.results(self.migration_id)
            if failure:
                self.outcome = self._outcome('failed', *failure)
            elif self.side == 'destination' and done:
                # The source completed: every connection of this side did.
                self.outcome = self._outcome('completed', connections=done)
            else:
                self.outcome = self._outcome('aborted', 'terminated',
                                             'stopped before any connection '
                                             'completed')
        self._exit()
        return self._rc(), self.outcome

    def _rc(self):
        return 0 if self.outcome.get('status') == 'completed' else 1

    def _outcome(self, status, reason=None, message=None, connections=()):
        out = {'event': 'outcome', 'side': self.side,
               'migration_id': self.migration_id, 'status': status,
               'connections': list(connections)}
        if reason:
            out.update(reason=reason, message=message or reason)
        return out

    @property
    def sockets(self):
        return list(self.params.get('sockets', {}).values())

    def sockets_left(self):
        return [p for p in self.sockets if os.path.exists(p)]
