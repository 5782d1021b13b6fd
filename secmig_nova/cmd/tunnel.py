"""``secmig-tunnel``: one side of one migration's tunnel as its own process.

Usage::

    secmig-tunnel --params params.json      # or --params - for stdin
                  [--config-file /etc/nova/nova.conf] [--debug]

Standard output carries JSON lines: ``{"event": "ready", ...}`` once
listening (the source's socket paths or the destination's endpoint) and
``{"event": "outcome", ...}`` at the end (status, reason, per-connection
bytes, digests and receipts); in between, the destination may print
``refused`` and ``refused_summary`` events for connections refused before
authorization, as rate-limited as their log lines (a reader ignores events
it does not know). Logs go to standard error through oslo.log.
Exit status: 0 completed, 1 refused/failed/aborted, 2 bad parameters.

``--spare`` starts a tunnel before its migration is known: it pins OpenSSL
to the default suite and group, loads everything and sets up logging,
prints ``{"event": "spare"}``, and only then reads the parameters (a
caller that keeps one spare per host takes the interpreter start off the
migration's path; each process still serves one migration). Parameters
asking for another suite or group are refused (the caller starts a fresh
tunnel for those). A spare whose standard input closes with nothing on it
was never used and exits quietly with status 0.

Parameters that cannot be used (unreadable, not strict UTF-8, not JSON, not
an object, a wrong type or value, an insecure ``key_file`` or
``socket_mode``) end the process with one ``outcome`` line (``refused``
and the reason), one log line and exit status 2, never with a traceback;
any other failure before the tunnel runs ends with an outcome line and
exit status 1.

This module imports nothing that loads OpenSSL at import time: Python 3.11
cannot pin TLS 1.3 suites or groups through ``ssl``, so :func:`main` first
points ``OPENSSL_CONF`` at a generated configuration, then imports the
tunnel (see secmig_nova/tunnel/tls.py).
"""

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import threading

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SIDE_CLASSES = {'source': 'SourceEndpoint',
                 'destination': 'DestinationEndpoint'}


_EMIT_LOCK = threading.Lock()


def _emit(obj):
    # Connection threads emit events: one line at a time.
    with _EMIT_LOCK:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + '\n')
        sys.stdout.flush()


def _read_params(path):
    """The parameters as JSON text in strict UTF-8 (``-``: stdin)."""
    return _parse_params(_read_bytes(path))


def _read_bytes(path):
    """What ``path`` holds (``-``: stdin), as bytes.

    Bytes are decoded later, not by the standard streams: stdin's error
    handler depends on the locale, and a surrogate-escaped byte would
    reach the parameters as a string that cannot be encoded again.
    """
    if path == '-':
        stream = getattr(sys.stdin, 'buffer', sys.stdin)
        return stream.read()
    with open(path, 'rb') as f:
        return f.read()


def _parse_params(data):
    if isinstance(data, bytes):
        data = data.decode('utf-8')
    return json.loads(data)


def _pin_openssl(raw):
    """Load this process's OpenSSL config; returns its (removed) path.

    Must run before anything loads libcrypto (``ssl``, ``hashlib``, and so
    oslo.config): OpenSSL reads ``OPENSSL_CONF`` once, at initialisation.
    """
    from secmig_nova.tunnel import tls_conf
    cipher = raw.get('tls_cipher', tls_conf.DEFAULT_CIPHER)
    curve = raw.get('ecdh_curve', tls_conf.DEFAULT_CURVE)
    if not isinstance(cipher, str) or not isinstance(curve, str) or \
            cipher not in tls_conf.CIPHER_SUITES or \
            curve not in tls_conf.GROUPS:
        return None     # parameter validation refuses it with a reason
    fd, path = tempfile.mkstemp(prefix='secmig-openssl-', suffix='.cnf')
    with os.fdopen(fd, 'w') as f:
        f.write(tls_conf.openssl_conf(cipher, curve))
    os.environ['OPENSSL_CONF'] = path
    try:
        # Loading the ssl module initialises OpenSSL, which reads the file
        # now; it is not needed afterwards, so a killed tunnel leaves
        # nothing behind in the temporary directory.
        import ssl  # noqa: F401
    finally:
        os.unlink(path)
    return path


def _rusage():
    """CPU time and peak RSS of this process.

    Peak RSS comes from VmHWM: ``ru_maxrss`` keeps the parent's high-water
    mark across fork and exec, so it would report the caller's size.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = None
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return {'cpu_user': usage.ru_utime, 'cpu_system': usage.ru_stime,
            'max_rss_kib': peak if peak is not None else usage.ru_maxrss}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='secmig-tunnel',
        description='Run one side of a secure live-migration tunnel.')
    parser.add_argument('--params', required=True,
                        help='JSON parameters file, or - for stdin')
    parser.add_argument('--config-file', action='append', default=[],
                        help='oslo.config file (logging options)')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--spare', action='store_true',
                        help='load everything first, then read the '
                        'parameters (default TLS suite and group only)')
    args = parser.parse_args(argv)
    if args.spare:
        return _run_spare(args)

    # Until the run starts, every failure ends in an outcome line and an
    # exit status, never in a traceback: unreadable or malformed
    # parameters are reported once logging is set up (below, in _run).
    raw = unreadable = unpinned = None
    try:
        raw = _read_params(args.params)
    except Exception as e:      # OSError, ValueError (JSON, UTF-8), deep
        unreadable = e          # nesting (RecursionError)...
    if isinstance(raw, dict):
        try:
            _pin_openssl(raw)
        except Exception as e:
            unpinned = e
    return _run(raw, args, unreadable=unreadable, unpinned=unpinned)


def _setup_logging(args):
    from oslo_config import cfg
    from oslo_log import log as logging

    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    # Standard output is the JSON channel; logs never go there.
    conf.set_default('use_stderr', True)
    conf([], project='secmig-nova', prog='secmig-tunnel',
         default_config_files=args.config_file)
    if args.debug:
        conf.set_override('debug', True)
    logging.setup(conf, 'secmig-tunnel')
    return logging.getLogger('secmig_nova.cmd.tunnel')


def _refuse(log, error, status='refused', code=EXIT_USAGE):
    """End before the run: one log line, the outcome line, the exit code.

    ``error`` is a TunnelError: its message is printable already (peer
    text in it went through errors.peer_text()).
    """
    if log is not None:
        log.error('refusing to start: %s', error)
    else:
        sys.stderr.write('secmig-tunnel: refusing to start: %s\n' % error)
        sys.stderr.flush()
    _emit({'event': 'outcome', 'status': status, 'reason': error.reason,
           'message': str(error.args[0])})
    return code


def _run_spare(args):
    from secmig_nova.tunnel import tls_conf
    unpinned = None
    try:
        _pin_openssl({})        # the defaults
    except Exception as e:
        unpinned = e

    def read():
        raw = unreadable = None
        try:
            data = _read_bytes(args.params)
            if not data:
                return None, None       # never used
            raw = _parse_params(data)
        except Exception as e:
            unreadable = e
        if isinstance(raw, dict) and unreadable is None:
            for key, asked in tls_conf.unpinned(raw):
                unreadable = ValueError(
                    'this spare tunnel is pinned to %s %s, the parameters '
                    'ask for %s %s' % (key, tls_conf.DEFAULTS[key],
                                       key, str(asked)[:40]))
        return raw, unreadable
    return _run(None, args, unpinned=unpinned, read=read)


def _run(raw, args, unreadable=None, unpinned=None, read=None):
    # Everything below may load OpenSSL.
    from secmig_nova.tunnel import endpoint
    from secmig_nova.tunnel import errors
    from secmig_nova.tunnel import params as tunnel_params

    def config_invalid(what, exc):
        return errors.TunnelError(
            errors.CONFIG_INVALID, '%s: %s' % (what, errors.peer_text(
                str(exc) or type(exc).__name__, limit=500)),
            notify_peer=False)

    try:
        log = _setup_logging(args)
    except Exception as e:      # a bad --config-file, logging options
        return _refuse(None, config_invalid('cannot set up logging', e))
    if read is not None:
        # A spare: everything is loaded; now wait for a migration.
        _emit({'event': 'spare', 'pid': os.getpid()})
        raw, unreadable = read()
        if raw is None and unreadable is None:
            return EXIT_OK
    if unreadable is not None:
        return _refuse(log, config_invalid('cannot read parameters',
                                           unreadable))
    if unpinned is not None:
        return _refuse(log, errors.TunnelError(
            'internal_error', 'cannot configure OpenSSL: %s'
            % errors.peer_text(str(unpinned), limit=500),
            notify_peer=False), status='failed', code=EXIT_FAILED)
    try:
        params = tunnel_params.from_dict(raw)
    except errors.TunnelError as e:
        return _refuse(log, e)
    except Exception as e:      # from_dict converts these already
        return _refuse(log, config_invalid('parameters not usable', e))

    side = None
    try:
        side = getattr(endpoint, _SIDE_CLASSES[params.side])(
            params, on_event=lambda event: _emit(dict(
                event, side=params.side, migration_id=params.migration_id)))
        listening = side.listen()
    except Exception as e:
        if side is not None:
            side.close()
        error = e
        if not isinstance(e, errors.TunnelError):
            # A bug, not a parameter: the traceback is for --debug only.
            log.debug('unexpected error starting the tunnel',
                      exc_info=True)
            error = errors.TunnelError(
                'internal_error', '%s: %s' % (
                    type(e).__name__, errors.peer_text(str(e), limit=500)),
                notify_peer=False)
        log.error('%s tunnel of migration %s refused to start: %s',
                  params.side, params.migration_id, error)
        _emit({'event': 'outcome', 'side': params.side,
               'migration_id': params.migration_id,
               'status': 'refused' if error.refusal else 'failed',
               'reason': error.reason, 'message': str(error.args[0]),
               'connections': []})
        return EXIT_FAILED

    def _on_signal(signum, _frame):
        side.terminate('terminated')

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    ready = {'event': 'ready', 'side': params.side,
             'migration_id': params.migration_id,
             'fingerprint': side.fingerprint, 'pid': os.getpid(),
             # CPU spent so far (start-up): the outcome's rusage minus
             # this is what carrying the stream cost.
             'rusage': _rusage()}
    if params.side == 'source':
        ready['sockets'] = listening
    else:
        ready['endpoint'] = listening
        # Where it listens, when the grant names another address (NAT).
        ready['bound'] = side.bound
        ready['bound'] = side.bound
    log.info('%s tunnel of migration %s ready: %s', params.side,
             params.migration_id, listening)
    _emit(ready)
    outcome = side.run()
    outcome['rusage'] = _rusage()
    log.info('%s tunnel of migration %s ended: %s%s', params.side,
             params.migration_id, outcome['status'],
             (' (%s)' % outcome['reason']) if 'reason' in outcome else '')
    _emit(outcome)
    return EXIT_OK if outcome['status'] == 'completed' else EXIT_FAILED


if __name__ == '__main__':
    sys.exit(main())
