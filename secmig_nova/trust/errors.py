"""The one error type of the trust package, with a named reason."""


class TrustError(Exception):
    """A certificate, chain, CRL or identity was refused.

    ``reason`` is a stable snake_case name (used in logs, tunnel outcomes and
    tests); the message says what was wrong in words an operator can act on.
    """

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


UNTRUSTED = 'certificate_untrusted'
EXPIRED = 'certificate_expired'
NOT_YET_VALID = 'certificate_not_yet_valid'
REVOKED = 'certificate_revoked'
CRL_INVALID = 'crl_invalid'
IDENTITY_INVALID = 'identity_invalid'
WRONG_CLOUD = 'wrong_cloud'
WRONG_ROLE = 'wrong_role'
FINGERPRINT_MISMATCH = 'fingerprint_mismatch'
KEY_INVALID = 'key_invalid'
