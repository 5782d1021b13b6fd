"""Tests for tunnel parameter validation (secmig_nova.tunnel.params).

A tunnel never starts half-configured: every missing or invalid field is
refused up front with ``config_invalid``. The environment is always passed
explicitly so that the test-hooks switch of the calling shell cannot leak
in.
"""

import math
import os
import shutil
import tempfile

import fixtures
from oslo_config import cfg
import testtools

from secmig_nova.conf import secmig as secmig_conf
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import params
from tests.fixtures import pki as pki_fixture

HOOKS_ON = {params.TEST_HOOKS_ENV: '1'}
# Marks a field or claim to remove.
_DROP = object()


class ParamsTest(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.pki = pki_fixture.get()
        cert_file, key_file = self.pki.a.hosts['host-a']
        self.source = {
            'side': 'source',
            'migration_id': 'mig-1',
            'cloud_id': 'cloud-a',
            'cert_file': cert_file,
            'key_file': key_file,
            'ca_file': self.pki.a.ca.ca_file,
            'peer': self.pki.b.trust(),
            'sockets': {'memory': '/run/secmig/mig-1.sock'},
            'grant': 'header.claims.signature',
        }
        cert_file, key_file = self.pki.b.hosts['host-b']
        self.destination = {
            'side': 'destination',
            'migration_id': 'mig-1',
            'cloud_id': 'cloud-b',
            'cert_file': cert_file,
            'key_file': key_file,
            'ca_file': self.pki.b.ca.ca_file,
            'crl_file': self.pki.b.ca.crl_file,
            'peer': self.pki.a.trust(crl=True),
            'sockets': {'memory': '/var/lib/nova/mig-1.sock',
                        'disk': '/var/lib/nova/mig-1-disk.sock'},
        }

    def load(self, obj, environ=None):
        return params.from_dict(obj, environ={} if environ is None
                                else environ)

    def with_(self, base=None, **changes):
        obj = dict(self.source if base is None else base)
        for name, value in changes.items():
            if value is _DROP:
                obj.pop(name, None)
            else:
                obj[name] = value
        return obj

    def assertInvalid(self, obj, environ=None):
        e = self.assertRaises(errors.TunnelError, self.load, obj, environ)
        self.assertEqual('config_invalid', e.reason, str(e))
        self.assertFalse(e.notify_peer)
        return e

    def assertInvalidValues(self, name, values, base=None):
        for value in values:
            self.assertInvalid(self.with_(base, **{name: value}))

    # -- accepted -------------------------------------------------------

    def test_minimal_source(self):
        p = self.load(self.source)
        self.assertTrue(p.source)
        self.assertEqual('mig-1', p.migration_id)
        self.assertEqual('header.claims.signature', p.grant)
        self.assertEqual(params.TrustParams('cloud-a',
                                            self.pki.a.ca.ca_file, None),
                         p.trust)
        self.assertEqual(params.TrustParams('cloud-b',
                                            self.pki.b.ca.ca_file, None),
                         p.peer)
        self.assertEqual({'memory': '/run/secmig/mig-1.sock'}, p.sockets)
        self.assertEqual({}, p.test_hooks)

    def test_minimal_destination(self):
        p = self.load(self.destination)
        self.assertFalse(p.source)
        self.assertIsNone(p.grant)
        self.assertEqual(self.pki.b.ca.crl_file, p.trust.crl_file)
        self.assertEqual(self.pki.a.ca.crl_file, p.peer.crl_file)
        self.assertEqual({'memory', 'disk'}, set(p.sockets))

    def test_peer_defaults_to_own_trust(self):
        p = self.load(self.with_(peer=_DROP))
        self.assertEqual(p.trust, p.peer)

    def test_defaults_are_the_secmig_options(self):
        conf = cfg.ConfigOpts()
        secmig_conf.register_opts(conf)
        conf([], default_config_files=[])
        opts = conf.secmig
        p = self.load(self.source)
        self.assertEqual(opts.tunnel_listen_address, p.listen_host)
        self.assertEqual(opts.tunnel_port_min, p.port_min)
        self.assertEqual(opts.tunnel_port_max, p.port_max)
        self.assertEqual(opts.checkpoint_bytes, p.checkpoint_bytes)
        self.assertEqual(opts.tls_cipher, p.tls_cipher)
        self.assertEqual(opts.ecdh_curve, p.ecdh_curve)
        self.assertEqual(opts.handshake_timeout, p.handshake_timeout)
        self.assertEqual(opts.local_endpoint_timeout,
                         p.local_endpoint_timeout)
        self.assertEqual(opts.idle_timeout, p.idle_timeout)
        self.assertEqual(opts.max_clock_skew, p.max_clock_skew)

    def test_other_defaults(self):
        p = self.load(self.source)
        self.assertEqual(0o660, p.socket_mode)
        self.assertEqual(256 * 1024, p.chunk_size)
        self.assertIsNone(p.expect_connections)
        self.assertIsNone(p.advertise_endpoint)

    def test_all_fields(self):
        p = self.load(self.with_(
            self.destination, listen_host='192.0.2.1', port_min=50000,
            port_max=50000, checkpoint_bytes=65536, tls_cipher='aes-128-gcm',
            ecdh_curve='secp384r1', handshake_timeout=2,
            local_endpoint_timeout=0.5, idle_timeout=30.0,
            max_clock_skew=5, deadline=60, termination_grace=1.5,
            chunk_size=4096, advertise_endpoint='203.0.113.7:50000',
            socket_mode='0600', expect_connections={'memory': 2, 'disk': 1},
            grant='ignored at the destination'))
        self.assertEqual(('192.0.2.1', 50000, 50000, 65536, 'aes-128-gcm',
                          'secp384r1', 2, 0.5, 30.0, 5, 60, 1.5, 4096,
                          '203.0.113.7:50000', 0o600,
                          {'memory': 2, 'disk': 1}),
                         (p.listen_host, p.port_min, p.port_max,
                          p.checkpoint_bytes, p.tls_cipher, p.ecdh_curve,
                          p.handshake_timeout, p.local_endpoint_timeout,
                          p.idle_timeout, p.max_clock_skew, p.deadline,
                          p.termination_grace, p.chunk_size,
                          p.advertise_endpoint, p.socket_mode,
                          p.expect_connections))
        self.assertIsNone(p.grant)

    def test_bounds_accepted(self):
        p = self.load(self.with_(checkpoint_bytes=64 * 1024,
                                 chunk_size=1 << 20, port_min=1,
                                 port_max=65535))
        self.assertEqual((65536, 1 << 20, 1, 65535),
                         (p.checkpoint_bytes, p.chunk_size, p.port_min,
                          p.port_max))

    # -- refused --------------------------------------------------------

    def test_not_an_object(self):
        for obj in (None, [], 'side=source', 1):
            self.assertInvalid(obj)

    def test_unknown_key(self):
        e = self.assertInvalid(self.with_(bogus=1, crl=2))
        self.assertIn('bogus', str(e))

    def test_side(self):
        self.assertInvalidValues('side', ('middle', 'Source', '', None, 1))
        self.assertInvalid(self.with_(side=_DROP))

    def test_required_strings(self):
        for name in ('migration_id', 'cloud_id', 'cert_file', 'key_file'):
            self.assertInvalid(self.with_(**{name: _DROP}))
            self.assertInvalidValues(name, ('', None, 7, ['x']))

    def test_migration_id(self):
        self.assertInvalidValues('migration_id',
                                 ('a/b', '../x', 'm' * 256))
        self.load(self.with_(migration_id='m' * 255))

    def test_cloud_id(self):
        self.assertInvalidValues('cloud_id', ('cloud a', 'a:b', '-a',
                                              'c' * 64))

    def test_ca_file(self):
        self.assertInvalidValues('ca_file', (
            None, 7, '/nonexistent/ca.crt', os.path.dirname(
                self.pki.a.ca.ca_file)))
        self.assertInvalid(self.with_(ca_file=_DROP))

    def test_crl_file(self):
        self.assertInvalidValues('crl_file', ('/nonexistent/ca.crl',
                                              os.path.dirname(
                                                  self.pki.a.ca.crl_file)))

    def test_crl_file_wrong_type(self):
        # Must be refused as config_invalid, not crash with a TypeError.
        self.assertInvalidValues('crl_file', (['/x.crl'], {'a': 1}))

    def test_peer(self):
        good = self.pki.b.trust()
        for peer in (None, 'cloud-b', [],
                     dict(good, cloud_id='bad cloud'),
                     dict(good, cloud_id=None),
                     dict(good, ca_file='/nonexistent'),
                     dict(good, crl_file='/nonexistent')):
            self.assertInvalid(self.with_(peer=peer))

    def test_source_needs_grant(self):
        self.assertInvalid(self.with_(grant=_DROP))
        self.assertInvalidValues('grant', (None, 7, {'token': 'x'}))

    def test_sockets(self):
        self.assertInvalid(self.with_(sockets=_DROP))
        self.assertInvalidValues('sockets', (
            None, {}, [], '/run/x.sock', {'cpu': '/x'},
            {'memory': '/x', 'cpu': '/y'}, {'memory': ''},
            {'memory': 5}, {'memory': None}))

    def test_simple_types(self):
        for name, value in (('listen_host', 5), ('port_min', '49400'),
                            ('port_max', 49499.0), ('checkpoint_bytes',
                                                    1e9),
                            ('tls_cipher', 1), ('ecdh_curve', None),
                            ('handshake_timeout', '10'),
                            ('idle_timeout', [1]), ('deadline', None),
                            ('chunk_size', 4096.0),
                            ('advertise_endpoint', 80)):
            self.assertInvalid(self.with_(**{name: value}))

    def test_bool_is_not_a_number(self):
        for name in ('port_min', 'port_max', 'checkpoint_bytes',
                     'chunk_size', 'handshake_timeout',
                     'local_endpoint_timeout', 'idle_timeout',
                     'max_clock_skew', 'deadline', 'termination_grace'):
            self.assertInvalid(self.with_(**{name: True}))

    def test_checkpoint_bytes(self):
        self.assertInvalidValues('checkpoint_bytes',
                                 (64 * 1024 - 1, 0, -1))

    def test_chunk_size(self):
        self.assertInvalidValues('chunk_size', (4095, (1 << 20) + 1, 0))

    def test_ports(self):
        self.assertInvalid(self.with_(port_min=0))
        self.assertInvalid(self.with_(port_min=-1, port_max=10))
        self.assertInvalid(self.with_(port_min=1, port_max=65536))
        self.assertInvalid(self.with_(port_min=50001, port_max=50000))

    def test_cipher_and_curve(self):
        self.assertInvalidValues('tls_cipher', (
            'chacha20-poly1305', 'AES-256-GCM', 'TLS_AES_256_GCM_SHA384',
            ''))
        self.assertInvalidValues('ecdh_curve', ('x25519', 'P-256',
                                                'secp521r1', ''))

    def test_socket_mode_not_octal(self):
        self.assertInvalidValues('socket_mode', ('rw-rw----', '9', '0x1b0',
                                                 '', None, True))

    def test_socket_mode_range(self):
        # os.chmod(path, -1) sets every bit, setuid and sticky included.
        self.assertInvalidValues('socket_mode', ('-1', '-660', '1000',
                                                 '4660', '100000'))

    def test_max_preauth_connections(self):
        self.assertEqual(32, self.load(self.destination)
                         .max_preauth_connections)
        self.assertEqual(5, self.load(self.with_(
            self.destination, max_preauth_connections=5))
            .max_preauth_connections)
        self.assertInvalidValues(
            'max_preauth_connections',
            (0, -1, params.MAX_PREAUTH_CONNECTIONS + 1, 1.5, '32', True,
             None), base=self.destination)

    def test_expect_connections(self):
        self.assertInvalidValues('expect_connections', (
            [], 'memory', {'cpu': 1}, {'memory': 0}, {'memory': -1},
            {'memory': '1'}, {'memory': 1.0}, {'memory': None}))

    def test_expect_connections_bool(self):
        self.assertInvalidValues('expect_connections', ({'memory': True},))

    def test_timeouts_must_be_positive(self):
        # Refused up front, not as an internal error at the first
        # connection (socket timeouts must be >= 0) or a deadline that
        # has already passed.
        for name in ('handshake_timeout', 'idle_timeout', 'deadline'):
            self.assertInvalidValues(name, (-1, 0))
        for name in ('local_endpoint_timeout', 'max_clock_skew',
                     'termination_grace'):
            self.assertInvalidValues(name, (-1, -0.5))

    # -- every field's type and content ----------------------------------

    def assertRefusedAs(self, reason, obj):
        e = self.assertRaises(errors.TunnelError, self.load, obj)
        self.assertEqual(reason, e.reason, str(e))
        self.assertFalse(e.notify_peer)
        self.assertTrue(str(e).isprintable(), str(e))
        return e

    def test_nul_in_socket_path(self):
        e = self.assertInvalid(self.with_(
            sockets={'memory': '/run/secmig/mig-1\x00.sock'}))
        self.assertIn('sockets.memory', str(e))
        self.assertIn('\\x00', str(e))
        self.assertNotIn('\x00', str(e))

    def test_nul_or_control_character_in_any_string(self):
        for name in ('migration_id', 'cert_file', 'key_file', 'ca_file',
                     'crl_file', 'grant', 'listen_host',
                     'advertise_endpoint'):
            for bad in ('a\x00b', 'a\nb', 'a\x1bb', 'a\u2028b', 'a\ud800b'):
                e = self.assertInvalid(self.with_(**{name: bad}))
                self.assertTrue(str(e).isprintable(), str(e))
        self.assertInvalidValues('cloud_id', ('cloud-a\x00',))
        good = self.pki.b.trust()
        for field in ('cloud_id', 'ca_file', 'crl_file'):
            self.assertInvalid(self.with_(
                peer=dict(good, **{field: good['ca_file'] + '\x00'})))

    def test_list_where_a_string_is_expected(self):
        for name in ('side', 'migration_id', 'cloud_id', 'cert_file',
                     'key_file', 'ca_file', 'crl_file', 'grant',
                     'listen_host', 'advertise_endpoint', 'tls_cipher',
                     'ecdh_curve', 'socket_mode'):
            e = self.assertInvalid(self.with_(**{name: ['x']}))
            if name not in ('side', 'socket_mode'):
                self.assertIn('not an array', str(e))
        self.assertInvalid(self.with_(sockets={'memory': ['/run/x.sock']}))
        self.assertInvalid(self.with_(
            peer=dict(self.pki.b.trust(), ca_file=[self.pki.b.ca.ca_file])))

    def test_dict_where_an_integer_is_expected(self):
        for name in ('port_min', 'port_max', 'checkpoint_bytes',
                     'chunk_size', 'max_preauth_connections',
                     'handshake_timeout', 'idle_timeout', 'deadline',
                     'local_endpoint_timeout', 'max_clock_skew',
                     'termination_grace'):
            e = self.assertInvalid(self.with_(**{name: {'value': 1}}))
            self.assertIn('not an object', str(e))
        self.assertInvalid(self.with_(expect_connections={'memory': {}}))

    def test_dict_or_list_where_an_object_is_expected_inside(self):
        for value in ([], 'x', 1):
            self.assertInvalid(self.with_(expect_connections=value))
        for value in ([], 'x', 1, ['corrupt_tx_at']):
            self.assertInvalid(self.with_(test_hooks=value), HOOKS_ON)
            self.assertInvalid(self.with_(test_hooks=value))

    def test_non_finite_or_negative_durations(self):
        for name in ('handshake_timeout', 'idle_timeout', 'deadline',
                     'local_endpoint_timeout', 'max_clock_skew',
                     'termination_grace'):
            self.assertInvalidValues(name, (
                math.nan, math.inf, -math.inf, -1, -0.001, 1e300,
                10 ** 400, params.MAX_SECONDS + 1))
            self.load(self.with_(**{name: params.MAX_SECONDS}))

    def test_limits(self):
        self.assertInvalidValues('checkpoint_bytes', (1 << 63, 10 ** 400))
        self.assertInvalidValues('port_max', (10 ** 400,))
        self.assertInvalidValues('chunk_size', (10 ** 400, -(10 ** 400)))
        self.assertInvalidValues('expect_connections', (
            {'memory': 65}, {'memory': 10 ** 400}))

    def test_socket_path_must_be_absolute(self):
        self.assertInvalidValues('sockets', (
            {'memory': 'mig-1.sock'}, {'memory': './mig-1.sock'},
            {'memory': '~/mig-1.sock'}))

    def test_socket_path_length(self):
        base = '/run/secmig/'
        fits = base + 'm' * (params.SOCKET_PATH_MAX - len(base))
        self.assertEqual(107, len(fits))
        self.load(self.with_(sockets={'memory': fits}))
        self.assertInvalid(self.with_(sockets={'memory': fits + 'm'}))
        # Bytes count, not characters.
        self.assertInvalid(self.with_(
            sockets={'memory': base + '\u00e9' * 48}))

    def test_socket_paths_differ(self):
        self.assertInvalid(self.with_(
            self.destination, sockets={'memory': '/run/x.sock',
                                       'disk': '/run/x.sock'}))

    def test_unknown_socket_kind_is_named(self):
        e = self.assertInvalid(self.with_(sockets={'cpu\n': '/x'}))
        self.assertIn('cpu\\x0a', str(e))

    def test_listen_host(self):
        for host in ('192.0.2.1', '::1', 'fe80::1%eth0', 'compute-1',
                     'compute-1.example.org', 'localhost'):
            self.assertEqual(host, self.load(self.with_(
                self.destination, listen_host=host)).listen_host)
        self.assertInvalidValues('listen_host', (
            '', 'host name', 'h\u00f6st', 'a' * 64, '-a', 'a..b',
            '192.0.2.1:80'), base=self.destination)

    def test_peer_unknown_field(self):
        e = self.assertInvalid(self.with_(
            peer=dict(self.pki.b.trust(), cert_file='/x')))
        self.assertIn('cert_file', str(e))

    def test_trust_is_not_a_parameter(self):
        # The own trust store comes from cloud_id/ca_file/crl_file; a
        # "trust" object used to be accepted and ignored.
        self.assertInvalid(self.with_(trust=self.pki.b.trust()))

    def test_cert_file_must_exist(self):
        self.assertInvalidValues('cert_file', ('/nonexistent/host.crt',))

    def test_empty_grant(self):
        self.assertInvalidValues('grant', ('',))

    def test_destination_grant_type(self):
        self.assertIsNone(self.load(self.with_(self.destination,
                                               grant=None)).grant)
        self.assertInvalidValues('grant', (['x'], 7), base=self.destination)

    def test_test_hooks_names_and_values(self):
        for hooks in ({'corrupt_tx_at': '1'}, {'corrupt_tx_at': True},
                      {'corrupt_tx_at': -1}, {'corrupt_tx_at': 1.5},
                      {'drop_everything': 1}):
            self.assertInvalid(self.with_(test_hooks=hooks), HOOKS_ON)

    def test_non_string_keys(self):
        # from_dict takes Python objects too: nothing may escape as a
        # TypeError.
        obj = dict(self.source)
        obj[1] = 'x'
        self.assertInvalid(obj)
        self.assertInvalid(self.with_(sockets={1: '/x'}))
        self.assertInvalid(self.with_(peer={('a',): 1}))

    def test_unexpected_exception_is_config_invalid(self):
        self.useFixture(fixtures.MockPatch(
            'secmig_nova.tunnel.params._sockets',
            side_effect=RecursionError('deep\nline')))
        e = self.assertInvalid(self.source)
        self.assertIn('RecursionError', str(e))
        self.assertTrue(str(e).isprintable())

    def test_unknown_names_are_escaped_and_bounded(self):
        obj = dict(self.source)
        obj.update({'k%d\n' % i: 1 for i in range(1000)})
        e = self.assertInvalid(obj)
        self.assertIn('and 990 more', str(e))
        self.assertNotIn('\n', str(e))
        self.assertLess(len(str(e)), 400)

    def test_long_value_is_cut_in_the_message(self):
        e = self.assertInvalid(self.with_(ca_file='/x' * 100000))
        self.assertLess(len(str(e)), 400)

    # -- refused as insecure ---------------------------------------------

    def test_world_writable_socket_mode(self):
        for mode in ('0666', '0662', '0002', '0777', '0606'):
            e = self.assertRefusedAs('socket_mode_insecure',
                                     self.with_(socket_mode=mode))
            self.assertIn(mode, str(e))
        for mode in ('0660', '0600', '0664', '0640', '0700'):
            self.load(self.with_(socket_mode=mode))

    def test_socket_mode_is_strict_octal(self):
        self.assertInvalidValues('socket_mode', (
            ' 0660', '0660 ', '0_660', '+660', '0o660', '\u0660\u0666\u0660',
            '00660', 660))

    def key_copy(self, mode):
        tmp = self.useFixture(fixtures.TempDir()).path
        key = os.path.join(tmp, 'host.key')
        shutil.copy(self.source['key_file'], key)
        os.chmod(key, mode)
        return key

    def test_key_file_readable_by_group_or_others(self):
        for mode in (0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601,
                     0o666):
            e = self.assertRefusedAs('key_file_insecure', self.with_(
                key_file=self.key_copy(mode)))
            self.assertIn('%04o' % mode, str(e))
            self.assertIn('chmod 600', str(e))

    def test_key_file_0600_accepted(self):
        key = self.key_copy(0o600)
        self.assertEqual(key, self.load(self.with_(key_file=key)).key_file)
        key = self.key_copy(0o400)
        self.assertEqual(key, self.load(self.with_(key_file=key)).key_file)

    def test_fixture_keys_are_private(self):
        for cert, key in self.pki.a.hosts.values():
            self.assertEqual(0, os.stat(key).st_mode & 0o077, key)

    def test_key_file_missing_or_not_a_file(self):
        self.assertInvalidValues('key_file', (
            '/nonexistent/host.key', tempfile.gettempdir()))

    # -- test hooks -----------------------------------------------------

    def test_test_hooks_refused_without_environment(self):
        hooks = {'corrupt_tx_at': 100}
        for environ in ({}, {params.TEST_HOOKS_ENV: '0'},
                        {params.TEST_HOOKS_ENV: 'true'},
                        {params.TEST_HOOKS_ENV: ''}):
            self.assertInvalid(self.with_(test_hooks=hooks), environ)

    def test_test_hooks_with_environment(self):
        hooks = {'corrupt_tx_at': 100}
        p = self.load(self.with_(test_hooks=hooks), HOOKS_ON)
        self.assertEqual(hooks, p.test_hooks)

    def test_empty_test_hooks_need_no_environment(self):
        self.assertEqual({}, self.load(self.with_(test_hooks={})).test_hooks)

    def test_process_environment_is_the_default(self):
        self.useFixture(fixtures.EnvironmentVariable(params.TEST_HOOKS_ENV))
        obj = self.with_(test_hooks={'corrupt_tx_at': 1})
        e = self.assertRaises(errors.TunnelError, params.from_dict, obj)
        self.assertEqual('config_invalid', e.reason)
