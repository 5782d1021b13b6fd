"""The host's ledger of used grant connections: single use across processes.

A destination tunnel accepts each connection of a grant (``jti``, stream
kind, connection index) once. Within one tunnel process a set is enough;
but a tunnel is a process per migration, so a restarted tunnel, or a
second tunnel on the same host, would otherwise accept the same grant
again. The ledger is a directory shared by every tunnel of the host: one
file per used connection, created with ``O_CREAT | O_EXCL`` (atomic on a
local file system, whichever process wins), holding the time after which
the grant cannot verify anyway (its ``exp`` plus the allowed clock skew).
Expired entries are removed as tunnels go; an entry whose time cannot be
read (a tunnel killed between creating and writing it) counts as used and
is removed only after :data:`UNREADABLE_TTL` seconds.

Failures are fail-closed: a ledger that cannot be created or written
refuses the connection (``grant_ledger_unavailable``).
"""

import hashlib
import os
import time

from oslo_log import log as logging

from secmig_nova.tunnel import errors

LOG = logging.getLogger(__name__)

UNAVAILABLE = 'grant_ledger_unavailable'
# The same reason (and ABORT code) as a replay within one tunnel process.
REPLAYED = 'connection_replayed'
# How often (seconds) a tunnel sweeps expired entries, at most.
PURGE_INTERVAL = 60.0
# Entries whose expiry cannot be read: kept this long after their mtime
# (longer than any grant lives; grants are minutes).
UNREADABLE_TTL = 24 * 3600.0
# Most entries a single sweep reads (the directory only grows by grants
# the broker issued, so this bounds a sweep's cost, not the ledger).
PURGE_BATCH = 10000


class GrantLedger:
    """Used grant connections of this host, in ``directory``."""

    def __init__(self, directory, clock=time.time):
        self.directory = directory
        self._clock = clock
        self._last_purge = 0.0

    def open(self):
        """Create the directory (0700) if needed; check it is usable.

        :raises TunnelError: ``grant_ledger_unavailable``.
        """
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            st = os.stat(self.directory)
            if st.st_mode & 0o022:
                raise errors.TunnelError(
                    UNAVAILABLE, 'grant ledger %s is writable by other '
                    'users (mode %04o): anyone could mark grants used or '
                    'remove their marks' % (self.directory,
                                            st.st_mode & 0o777),
                    notify_peer=False)
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise OSError('not writable')
        except OSError as e:
            raise errors.TunnelError(
                UNAVAILABLE, 'grant ledger %s is not usable: %s'
                % (self.directory, e), notify_peer=False)
        return self

    @staticmethod
    def _name(jti, kind, index):
        key = '%s\0%s\0%d' % (jti, kind, index)
        return hashlib.sha256(key.encode('utf-8')).hexdigest()

    def consume(self, jti, kind, index, expires_at):
        """Mark connection ``kind#index`` of grant ``jti`` used, once.

        :param expires_at: the last time the grant can verify.
        :raises TunnelError: ``connection_replayed`` when any tunnel of this
            host used it before; ``grant_ledger_unavailable`` when the
            ledger cannot tell (refused, never accepted unchecked).
        """
        now = self._clock()
        if now - self._last_purge > PURGE_INTERVAL:
            self._last_purge = now
            self.purge(now)
        path = os.path.join(self.directory, self._name(jti, kind, index))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise errors.TunnelError(
                REPLAYED, '%s connection #%d of grant %s was already used '
                'on this host' % (kind, index, errors.peer_text(jti)))
        except OSError as e:
            raise errors.TunnelError(UNAVAILABLE, 'cannot record grant %s '
                                     'in %s: %s' % (errors.peer_text(jti),
                                                    self.directory, e))
        try:
            os.write(fd, ('%.3f\n' % expires_at).encode('ascii'))
            os.fsync(fd)
        except OSError as e:
            raise errors.TunnelError(UNAVAILABLE, 'cannot record grant %s '
                                     'in %s: %s' % (errors.peer_text(jti),
                                                    self.directory, e))
        finally:
            os.close(fd)

    def _expired(self, path, now):
        try:
            with open(path, 'rb') as f:
                data = f.read(64)
            return float(data.decode('ascii')) < now
        except (OSError, ValueError, UnicodeError):
            try:
                return os.stat(path).st_mtime + UNREADABLE_TTL < now
            except OSError:
                return True  # removed meanwhile

    def purge(self, now=None):
        """Remove entries of grants that can no longer verify."""
        now = self._clock() if now is None else now
        removed = 0
        try:
            with os.scandir(self.directory) as entries:
                for n, entry in enumerate(entries):
                    if n >= PURGE_BATCH:
                        break
                    if len(entry.name) == 64 and \
                            self._expired(entry.path, now):
                        try:
                            os.unlink(entry.path)
                            removed += 1
                        except FileNotFoundError:
                            pass
        except OSError as e:
            LOG.warning('Cannot sweep grant ledger %s: %s', self.directory, e)
        return removed
