"""``secmig-tunnel``'s ``main()``: bad parameters end in an outcome line.

Whatever is wrong with the parameters (unreadable, not UTF-8, not JSON,
not an object, a wrong type, an insecure key or socket mode), the process
prints exactly one ``outcome`` line with ``refused`` and the reason, logs
one escaped line with it, exits with status 2 and never prints a
traceback. Each test runs the real process (python -m
secmig_nova.cmd.tunnel): what matters is what its caller reads.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import fixtures
import testtools

from secmig_nova.cmd import tunnel
from secmig_nova.tunnel import params as tunnel_params
from tests.fixtures import pki as pki_fixture

TIMEOUT = 60


class TunnelMainTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        self.dir = self.useFixture(fixtures.TempDir()).path
        cert_file, key_file = self.pki.a.hosts['host-a']
        # A source whose grant is not a grant: it passes parameter
        # validation and is refused (grant_invalid) before it listens.
        self.source = {
            'side': 'source', 'migration_id': 'mig-1',
            'cloud_id': 'cloud-a', 'cert_file': cert_file,
            'key_file': key_file, 'ca_file': self.pki.a.ca.ca_file,
            'peer': self.pki.b.trust(),
            'sockets': {'memory': os.path.join(self.dir, 'mig-1.sock')},
            'grant': 'header.claims.signature',
        }

    def run_tunnel(self, data, args=('--params', '-'), env=None):
        """Run secmig-tunnel with ``data`` on stdin.

        ``data``: bytes, or an object to send as JSON. Returns
        ``(returncode, outcome, stdout, stderr)``.
        """
        if not isinstance(data, bytes):
            data = json.dumps(data).encode()
        environ = dict(os.environ)
        environ.pop(tunnel_params.TEST_HOOKS_ENV, None)
        environ.update(env or {})
        proc = subprocess.run(
            [sys.executable, '-m', 'secmig_nova.cmd.tunnel'] + list(args),
            input=data, capture_output=True, timeout=TIMEOUT, env=environ,
            cwd=self.dir)
        stdout = proc.stdout.decode('utf-8', 'replace')
        stderr = proc.stderr.decode('utf-8', 'replace')
        for stream in (stdout, stderr):
            self.assertNotIn('Traceback', stream,
                             'stdout:\n%s\nstderr:\n%s' % (stdout, stderr))
        lines = stdout.splitlines()
        self.assertEqual(1, len(lines), stdout + stderr)
        outcome = json.loads(lines[0])
        self.assertEqual('outcome', outcome['event'])
        return proc.returncode, outcome, stdout, stderr

    def assertRefused(self, data, reason='config_invalid', **kwargs):
        rc, outcome, _out, err = self.run_tunnel(data, **kwargs)
        self.assertEqual(tunnel.EXIT_USAGE, rc, outcome)
        self.assertEqual('refused', outcome['status'], outcome)
        self.assertEqual(reason, outcome['reason'], outcome)
        self.assertTrue(outcome['message'].isprintable(), outcome)
        # One log line names the reason.
        logged = [line for line in err.splitlines()
                  if 'refusing to start: %s: ' % reason in line]
        self.assertEqual(1, len(logged), err)
        self.assertTrue(logged[0].isprintable(), logged[0])
        return outcome, err

    def with_(self, **changes):
        obj = dict(self.source)
        obj.update(changes)
        return obj

    # -- parameters that are not a parameters object --------------------

    def test_not_an_object(self):
        for text in (b'[]', b'"source"', b'null', b'1'):
            outcome, _err = self.assertRefused(text)
            self.assertIn('must be a JSON object', outcome['message'])

    def test_not_json(self):
        for text in (b'', b'{', b'{"side": source}', b'{} {}'):
            outcome, _err = self.assertRefused(text)
            self.assertIn('cannot read parameters', outcome['message'])

    def test_invalid_utf8(self):
        data = json.dumps(self.source).encode()
        for bad in (data.replace(b'mig-1', b'mig-\xff', 1),
                    data.replace(b'mig-1', b'mig-\xed\xa0\x80', 1),
                    b'\xff\xfe{}'):
            outcome, _err = self.assertRefused(bad)
            self.assertIn("can't decode", outcome['message'])

    def test_invalid_utf8_in_a_file(self):
        path = os.path.join(self.dir, 'params.json')
        with open(path, 'wb') as f:
            f.write(json.dumps(self.source).encode().replace(
                b'mig-1', b'mig-\xff', 1))
        outcome, _err = self.assertRefused(b'', args=('--params', path))
        self.assertIn("can't decode", outcome['message'])

    def test_unreadable_file(self):
        for path in (os.path.join(self.dir, 'missing.json'), self.dir):
            outcome, _err = self.assertRefused(b'', args=('--params', path))
            self.assertIn('cannot read parameters', outcome['message'])

    def test_deeply_nested_json(self):
        self.assertRefused(b'[' * 100000 + b']' * 100000)

    def test_bad_config_file(self):
        path = os.path.join(self.dir, 'missing.conf')
        outcome, err = self.assertRefused(
            self.source, args=('--params', '-', '--config-file', path))
        self.assertIn('cannot set up logging', outcome['message'])

    # -- bad fields -----------------------------------------------------

    def test_nul_in_socket_path(self):
        outcome, err = self.assertRefused(self.with_(
            sockets={'memory': os.path.join(self.dir, 'm\x00.sock')}))
        self.assertIn('sockets.memory', outcome['message'])
        self.assertNotIn('\x00', err)
        self.assertEqual([], os.listdir(self.dir))

    def test_list_where_a_string_is_expected(self):
        for name in ('cert_file', 'key_file', 'migration_id', 'grant',
                     'tls_cipher', 'ecdh_curve', 'listen_host'):
            outcome, _err = self.assertRefused(self.with_(**{name: ['x']}))
            self.assertIn(name, outcome['message'])

    def test_dict_where_an_integer_is_expected(self):
        for name in ('port_min', 'chunk_size', 'checkpoint_bytes',
                     'handshake_timeout'):
            outcome, _err = self.assertRefused(self.with_(**{name: {}}))
            self.assertIn(name, outcome['message'])

    def test_non_finite_and_negative_timeouts(self):
        data = json.dumps(self.with_(idle_timeout=1.5)).encode()
        for value in (b'NaN', b'Infinity', b'-Infinity', b'1e400', b'-1',
                      b'-0.5'):
            outcome, _err = self.assertRefused(
                data.replace(b'1.5', value, 1))
            self.assertIn('idle_timeout', outcome['message'])

    def test_test_hooks_list_with_hooks_enabled(self):
        self.assertRefused(self.with_(test_hooks=['corrupt_tx_at']),
                           env={tunnel_params.TEST_HOOKS_ENV: '1'})

    def test_control_characters_are_escaped_in_log_and_outcome(self):
        outcome, err = self.assertRefused(self.with_(
            **{'bogus\nCRITICAL forged\x1b[2J': 1}))
        self.assertIn('bogus\\x0aCRITICAL forged\\x1b[2J',
                      outcome['message'])
        self.assertNotIn('\x1b', err)
        self.assertFalse([line for line in err.splitlines()
                          if line.startswith('CRITICAL forged')], err)

    # -- insecure -------------------------------------------------------

    def test_world_writable_socket_mode(self):
        outcome, _err = self.assertRefused(self.with_(socket_mode='0666'),
                                           reason='socket_mode_insecure')
        self.assertIn('0666', outcome['message'])
        self.assertEqual([], os.listdir(self.dir))

    def key_copy(self, mode):
        key = os.path.join(self.dir, 'host-%o.key' % mode)
        shutil.copy(self.source['key_file'], key)
        os.chmod(key, mode)
        return key

    def test_key_file_0644(self):
        key = self.key_copy(0o644)
        outcome, _err = self.assertRefused(self.with_(key_file=key),
                                           reason='key_file_insecure')
        self.assertIn('0644', outcome['message'])
        self.assertIn('chmod 600', outcome['message'])
        self.assertFalse(os.path.exists(self.source['sockets']['memory']))

    def test_key_file_0600_accepted(self):
        # Validation passes; the fake grant is refused next, before any
        # socket exists.
        rc, outcome, _out, err = self.run_tunnel(
            self.with_(key_file=self.key_copy(0o600)))
        self.assertEqual(tunnel.EXIT_FAILED, rc, outcome)
        self.assertEqual(('refused', 'grant_invalid'),
                         (outcome['status'], outcome['reason']), outcome)
        self.assertFalse(os.path.exists(self.source['sockets']['memory']))

    # -- in process -----------------------------------------------------

    def test_unexpected_error_at_start_is_an_outcome(self):
        # A bug while starting (not a parameter) still ends in the outcome
        # line: failed, internal_error, exit status 1.
        out = io.StringIO()
        self.useFixture(fixtures.MonkeyPatch('sys.stdout', out))
        self.useFixture(fixtures.MockPatch(
            'secmig_nova.cmd.tunnel._setup_logging'))
        self.useFixture(fixtures.MockPatch(
            'secmig_nova.tunnel.endpoint.SourceEndpoint',
            side_effect=ValueError('embedded\nnull byte')))
        args = type('Args', (), {'config_file': [], 'debug': False})
        rc = tunnel._run(self.source, args)
        self.assertEqual(tunnel.EXIT_FAILED, rc)
        out.seek(0)
        outcome = json.loads(out.read())
        self.assertEqual(('failed', 'internal_error'),
                         (outcome['status'], outcome['reason']))
        self.assertEqual('ValueError: embedded\\x0anull byte',
                         outcome['message'])
