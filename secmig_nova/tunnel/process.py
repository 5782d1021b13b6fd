"""Start and supervise a ``secmig-tunnel`` process.

The compute driver, ``secmig-migrate``, the tests and the benchmarks all run
tunnels through this class, so the process contract (parameters on stdin,
one ``ready`` line, one ``outcome`` line, SIGTERM to stop) lives in one
place. Crypto and copying never run in the caller's process.

A *spare* (:class:`SpareTunnels`, ``secmig-tunnel --spare``) is the same
process started before its migration is known: it prints a ``spare`` line
once loaded and reads its parameters when they come.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class TunnelProcessError(Exception):
    """The tunnel process did not start or did not report an outcome."""

    def __init__(self, message, outcome=None):
        super().__init__(message)
        self.outcome = outcome


class TunnelProcess:
    """One running tunnel side.

    :param params: the parameters dict (see secmig_nova/tunnel/params.py).
    :param command: argv prefix; default runs this interpreter's module so
        the same code is used whether or not console scripts are installed.
    :param env: extra environment variables.
    :param preexec: argv prefix to run the tunnel in another namespace
        (e.g. ``['nsenter', '-t', PID, '-m', '-u']``).
    """

    def __init__(self, params, command=None, env=None, prefix=None,
                 debug=False, stderr=None):
        self.params = params
        argv = list(prefix or [])
        argv += command or [sys.executable, '-m', 'secmig_nova.cmd.tunnel']
        argv += ['--params', '-']
        if debug:
            argv.append('--debug')
        if params is None:
            # A spare (see SpareTunnels): parameters come with start().
            argv.append('--spare')
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._stderr_sink = stderr
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.PIPE,
            env=full_env, text=True)
        if params is not None:
            self.start(params)
        self.spare = None
        self.ready = None
        self.outcome = None
        # Other events (e.g. the destination's ``refused``), the latest
        # ones: the tunnel rate-limits them, this bounds them again.
        self.events = collections.deque(maxlen=1000)
        self._stderr = []
        self._lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_stdout,
                                        daemon=True)
        self._reader.start()
        if self.proc.stderr is not None:
            self._err_reader = threading.Thread(target=self._read_stderr,
                                                daemon=True)
            self._err_reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                LOG.warning('tunnel printed a non-JSON line: %r', line)
                continue
            with self._cond:
                if event.get('event') == 'spare':
                    self.spare = event
                elif event.get('event') == 'ready':
                    self.ready = event
                elif event.get('event') == 'outcome':
                    self.outcome = event
                else:
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def start(self, params):
        """Hand the process its parameters (once; a spare's are late)."""
        self.params = params
        try:
            self.proc.stdin.write(json.dumps(params))
            self.proc.stdin.close()
        except OSError as e:    # BrokenPipeError: it died meanwhile
            raise TunnelProcessError('tunnel process %d is gone: %s'
                                     % (self.proc.pid, e))

    @property
    def alive(self):
        return self.proc.poll() is None

    def _read_stderr(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self):
        return ''.join(self._stderr)

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout=30.0):
        """Return the ready event; raises if the process ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ready is None and self.outcome is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None
                                      and not self._reader.is_alive()):
                    break
                self._cond.wait(min(remaining, 0.2))
        if self.ready is None:
            raise TunnelProcessError(
                'tunnel did not become ready: %s'
                % (self.outcome or self.stderr[-2000:] or 'no output'),
                self.outcome)
        return self.ready

    def wait_spare(self, timeout=30.0):
        """Whether a spare loaded (its ``spare`` line) within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.spare is None and self.alive and \
                    time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.0,
                                             deadline - time.monotonic())))
        return self.spare is not None and self.alive

    def wait_event(self, predicate, timeout=30.0):
        """The first event for which ``predicate(event)`` is true.

        :returns: the event, or None if the process ended or ``timeout``
            passed first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.outcome is not None or \
                        not self._reader.is_alive():
                    return None
                self._cond.wait(min(remaining, 0.2))

    def wait(self, timeout=None):
        """Wait for the process; return ``(returncode, outcome)``."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TunnelProcessError('tunnel still running after %s s'
                                     % timeout)
        self._reader.join(5)
        return rc, self.outcome

    def terminate(self, timeout=30.0):
        """SIGTERM, then wait; SIGKILL only if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TunnelProcessError:
            LOG.error('tunnel process %d ignored SIGTERM, killing it',
                      self.proc.pid)
            self.proc.kill()
            return self.wait(5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(5)

    def close_spare(self, timeout=10.0):
        """End an unused spare: close its input; it exits by itself."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.wait(timeout)
        except TunnelProcessError:
            return self.kill()


class SpareTunnels:
    """A tunnel factory that keeps one process started ahead.

    ``factory(params)`` hands ``params`` to the spare when it still runs and
    the parameters use the default TLS suite and group (what the spare
    pinned); otherwise it starts a fresh process. ``replenish()`` starts the
    next spare once the migration is over. Either way one process serves
    one migration: only the interpreter start and the imports move off the
    migration's path.
    The keyword arguments are :class:`TunnelProcess`'s. ``close()`` ends
    the spare (a spare whose caller dies sees its standard input close and
    exits by itself). With ``replenish=False`` (a one-shot caller such as
    ``secmig-migrate``) a spare taken is not replaced.
    """

    def __init__(self, replenish=True, **kwargs):
        self.kwargs = kwargs
        self.keep = replenish
        self._lock = threading.Lock()
        self._spare = None
        self.used = 0           # migrations a spare served
        self.fresh = 0          # migrations that needed a fresh process

    def prepare(self):
        """Start the spare now if there is none (cheap: no waiting)."""
        with self._lock:
            self._ensure_spare()

    def _ensure_spare(self):
        if self._spare is None or not self._spare.alive:
            try:
                self._spare = TunnelProcess(None, **self.kwargs)
            except Exception as e:  # noqa: only an optimisation
                LOG.warning('Could not start a spare secmig-tunnel (the '
                            'next migration starts a fresh one): %s', e)
                self._spare = None

    def wait_loaded(self, timeout=30.0):
        """Wait until the spare has loaded; False if there is none."""
        with self._lock:
            spare = self._spare
        return spare is not None and spare.wait_spare(timeout)

    def __call__(self, params):
        from secmig_nova.tunnel import tls_conf
        pinned = not tls_conf.unpinned(params)
        with self._lock:
            spare, self._spare = self._spare, None
            if pinned and spare is not None and spare.alive:
                try:
                    spare.start(params)
                    self.used += 1
                    return spare
                except TunnelProcessError as e:
                    LOG.warning('Spare secmig-tunnel unusable (%s); '
                                'starting a fresh one', e)
            elif spare is not None:
                spare.close_spare()
            self.fresh += 1
            return TunnelProcess(params, **self.kwargs)

    def replenish(self):
        """Start the next spare (after a migration took the last)."""
        if not self.keep:
            return
        with self._lock:
            self._ensure_spare()

    def close(self):
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close_spare()
