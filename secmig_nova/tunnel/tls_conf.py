"""TLS 1.3 suites and groups, and the OpenSSL config that pins them.

Kept apart from tls.py, with no imports, because it must be usable before
OpenSSL is initialised: ``secmig-tunnel`` writes this configuration and
sets ``OPENSSL_CONF`` before anything imports :mod:`ssl` or :mod:`hashlib`
(oslo.config imports hashlib, and libcrypto reads its configuration once,
when it is first loaded).
"""

DEFAULT_CIPHER = 'aes-256-gcm'
DEFAULT_CURVE = 'prime256v1'
# Tunnel parameter -> its default (what a spare tunnel pins).
DEFAULTS = {'tls_cipher': DEFAULT_CIPHER, 'ecdh_curve': DEFAULT_CURVE}

CIPHER_SUITES = {
    'aes-256-gcm': 'TLS_AES_256_GCM_SHA384',
    'aes-128-gcm': 'TLS_AES_128_GCM_SHA256',
}
GROUPS = {
    'prime256v1': 'P-256',
    'secp384r1': 'P-384',
}


def unpinned(params):
    """The ``(key, asked)`` pairs where ``params`` leave the defaults.

    A spare tunnel (``secmig-tunnel --spare``) pins the defaults before it
    knows its parameters; it can serve only parameters with none of these.
    """
    return [(key, params.get(key, value)) for key, value in DEFAULTS.items()
            if params.get(key, value) != value]


def openssl_conf(cipher, curve):
    """Text of an OpenSSL config pinning the TLS 1.3 suite and group."""
    return ('openssl_conf = secmig_init\n'
            '[secmig_init]\n'
            'ssl_conf = secmig_ssl\n'
            '[secmig_ssl]\n'
            'system_default = secmig_tls\n'
            '[secmig_tls]\n'
            'MinProtocol = TLSv1.3\n'
            'Ciphersuites = %s\n'
            'Groups = %s\n' % (CIPHER_SUITES[cipher], GROUPS[curve]))
