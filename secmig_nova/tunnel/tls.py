"""TLS 1.3 contexts of the tunnel and the checks around the handshake.

The stdlib ``ssl`` module does all cryptography: mutual X.509
authentication, ECDHE, HKDF and AES-GCM records. This module only pins the
parameters (TLS 1.3 only, one AEAD suite, one ECDHE group, no session
tickets or resumption, no compression), loads the peer cloud's CA bundle
and CRL into OpenSSL, re-verifies the peer with the cloud's trust store
(identity, role and the fingerprint pinned for the migration) and maps
OpenSSL's errors to named refusal reasons.

Python 3.11's ``ssl`` cannot select TLS 1.3 cipher suites or groups, so the
tunnel process sets ``OPENSSL_CONF`` (see :func:`openssl_conf`) before
OpenSSL initialises; :func:`check_negotiated` then refuses any connection
whose negotiated version or suite is not the configured one, so a missing
configuration fails closed instead of silently using another suite.
"""

import ssl

from secmig_nova.trust import errors as trust_errors
from secmig_nova.tunnel import errors
from secmig_nova.tunnel import tls_conf

CIPHER_SUITES = tls_conf.CIPHER_SUITES
openssl_conf = tls_conf.openssl_conf


def make_context(server, credentials_files, peer_store, curve):
    """Build the context of one side.

    :param server: True for the destination (TLS server).
    :param credentials_files: (cert_file, key_file) of this host.
    :param peer_store: TrustStore of the peer's cloud; its CA file and CRL
        are what OpenSSL verifies the peer against during the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server
                         else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    if server:
        # No TLS 1.3 tickets, hence no PSK resumption: every connection is
        # a full handshake with fresh ECDHE keys and both certificates.
        ctx.num_tickets = 0
    # Identity, role and pinning are checked after the handshake with the
    # trust store (cryptography's verifier); the hostname check would only
    # duplicate part of that.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=peer_store.ca_file)
    if peer_store.crl_file:
        ctx.load_verify_locations(cafile=peer_store.crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.load_cert_chain(*credentials_files)
    ctx.set_ecdh_curve(curve)
    return ctx


def check_negotiated(sock, cipher):
    """Refuse a session whose version or suite is not the pinned one."""
    version = sock.version()
    suite = (sock.cipher() or ('',))[0]
    if version != 'TLSv1.3':
        raise errors.TunnelError(errors.TLS_VERSION,
                                 'negotiated %s, only TLSv1.3 is accepted'
                                 % version)
    if suite != CIPHER_SUITES[cipher]:
        raise errors.TunnelError(
            errors.TLS_PARAMETERS,
            'negotiated cipher suite %s, configured %s (%s); is '
            'OPENSSL_CONF overridden?' % (suite, cipher,
                                          CIPHER_SUITES[cipher]))
    return version, suite


def verify_peer(sock, peer_store, purpose, expected_fingerprint=None,
                dns_name=None):
    """Re-verify the handshake's peer certificate with the trust store."""
    from cryptography import x509
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise errors.TunnelError('certificate_untrusted',
                                 'peer presented no certificate')
    try:
        cert = x509.load_der_x509_certificate(der)
        return peer_store.verify([cert], purpose, role='host',
                                 dns_name=dns_name,
                                 expected_fingerprint=expected_fingerprint)
    except trust_errors.TrustError as e:
        raise errors.from_trust_error(e)
    except ValueError as e:
        raise errors.TunnelError('certificate_untrusted',
                                 'unreadable peer certificate: %s' % e)


_VERIFY_CODES = {
    9: 'certificate_not_yet_valid',
    10: 'certificate_expired',
    23: 'certificate_revoked',
    3: 'crl_invalid',
    11: 'crl_invalid',
    12: 'crl_invalid',
}

_ALERT_REASONS = (
    ('PROTOCOL_VERSION', errors.TLS_VERSION),
    ('UNSUPPORTED_PROTOCOL', errors.TLS_VERSION),
    ('NO_PROTOCOLS_AVAILABLE', errors.TLS_VERSION),
    ('ALERT_CERTIFICATE', errors.PEER_REFUSED_CERTIFICATE),
    ('ALERT_UNKNOWN_CA', errors.PEER_REFUSED_CERTIFICATE),
    ('ALERT_BAD_CERTIFICATE', errors.PEER_REFUSED_CERTIFICATE),
    ('ALERT_DECRYPT_ERROR', errors.PEER_REFUSED_CERTIFICATE),
    ('ALERT_HANDSHAKE_FAILURE', errors.TLS_HANDSHAKE_FAILED),
)


def map_ssl_error(exc, peer):
    """Turn an ``ssl``/socket error during the handshake into a refusal."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_CODES.get(exc.verify_code, 'certificate_untrusted')
        return errors.TunnelError(
            reason, 'certificate of %s refused in the TLS handshake: %s'
            % (peer, exc.verify_message), notify_peer=False)
    if isinstance(exc, ssl.SSLError):
        name = exc.reason or ''
        for needle, reason in _ALERT_REASONS:
            if needle in name:
                return errors.TunnelError(
                    reason, 'TLS handshake with %s failed: %s'
                    % (peer, name), notify_peer=False)
        return errors.TunnelError(
            errors.TLS_HANDSHAKE_FAILED,
            'TLS handshake with %s failed: %s' % (peer, name or exc),
            notify_peer=False)
    if isinstance(exc, TimeoutError):
        return errors.TunnelError('timeout', 'TLS handshake with %s timed '
                                  'out' % peer, notify_peer=False)
    return errors.TunnelError(
        errors.TLS_HANDSHAKE_FAILED,
        'TLS handshake with %s failed: %s' % (peer, exc),
        notify_peer=False)
