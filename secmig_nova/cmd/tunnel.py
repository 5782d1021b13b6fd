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
    if path == '-':
        return json.load(sys.stdin)
    with open(path) as f:
        return json.load(f)


def _pin_openssl(raw):
    """Load this process's OpenSSL config; returns its (removed) path.

    Must run before anything loads libcrypto (``ssl``, ``hashlib``, and so
    oslo.config): OpenSSL reads ``OPENSSL_CONF`` once, at initialisation.
    """
    from secmig_nova.tunnel import tls_conf
    cipher = raw.get('tls_cipher', tls_conf.DEFAULT_CIPHER)
    curve = raw.get('ecdh_curve', tls_conf.DEFAULT_CURVE)
    if cipher not in tls_conf.CIPHER_SUITES or \
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
    args = parser.parse_args(argv)

    try:
        raw = _read_params(args.params)
    except (OSError, ValueError) as e:
        _emit({'event': 'outcome', 'status': 'refused',
               'reason': 'config_invalid',
               'message': 'cannot read parameters: %s' % e})
        return EXIT_USAGE
    if isinstance(raw, dict):
        _pin_openssl(raw)
    return _run(raw, args)


def _run(raw, args):
    # Everything below may load OpenSSL.
    from oslo_config import cfg
    from oslo_log import log as logging

    from secmig_nova.tunnel import endpoint
    from secmig_nova.tunnel import errors
    from secmig_nova.tunnel import params as tunnel_params

    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    # Standard output is the JSON channel; logs never go there.
    conf.set_default('use_stderr', True)
    conf([], project='secmig-nova', prog='secmig-tunnel',
         default_config_files=args.config_file)
    if args.debug:
        conf.set_override('debug', True)
    logging.setup(conf, 'secmig-tunnel')
    log = logging.getLogger('secmig_nova.cmd.tunnel')

    try:
        params = tunnel_params.from_dict(raw)
    except errors.TunnelError as e:
        log.error('refusing to start: %s', e)
        _emit({'event': 'outcome', 'status': 'refused', 'reason': e.reason,
               'message': str(e.args[0])})
        return EXIT_USAGE

    side = None
    try:
        side = getattr(endpoint, _SIDE_CLASSES[params.side])(
            params, on_event=lambda event: _emit(dict(
                event, side=params.side, migration_id=params.migration_id)))
        listening = side.listen()
    except errors.TunnelError as e:
        if side is not None:
            side.close()
        log.error('%s tunnel of migration %s refused to start: %s',
                  params.side, params.migration_id, e)
        _emit({'event': 'outcome', 'side': params.side,
               'migration_id': params.migration_id,
               'status': 'refused' if e.refusal else 'failed',
               'reason': e.reason, 'message': str(e.args[0]),
               'connections': []})
        return EXIT_FAILED

    def _on_signal(signum, _frame):
        side.terminate('terminated')

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    ready = {'event': 'ready', 'side': params.side,
             'migration_id': params.migration_id,
             'fingerprint': side.fingerprint, 'pid': os.getpid()}
    if params.side == 'source':
        ready['sockets'] = listening
    else:
        ready['endpoint'] = listening
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
