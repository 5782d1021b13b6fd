"""Enforcement modes: whether one live migration must, may or won't be secure.

Each compute host has a mode (``[secmig] enforcement``); a server's flavor
extra spec ``secmig:enforcement`` replaces it (flavors belong to the
operator), and its image property ``secmig:enforcement`` can only make it
stricter (images belong to users, who may ask for more protection but
never switch it off). Both hosts of a migration compute the same decision
from the same inputs: the server's wanted mode and whether each host
offers the tunnel.

Nothing here imports nova; the driver feeds it plain values.
"""

import dataclasses

REQUIRED = 'required'
PREFERRED = 'preferred'
DISABLED = 'disabled'
# Weakest first: the rank of a mode is its index.
MODES = (DISABLED, PREFERRED, REQUIRED)

# Flavor extra spec and image property.
KEY = 'secmig:enforcement'
# Nova keeps an instance's image properties in its system metadata under
# this prefix (nova.utils.SM_IMAGE_PROP_PREFIX).
IMAGE_SYSTEM_METADATA_KEY = 'image_' + KEY


class InvalidMode(ValueError):
    """A flavor or image names a mode that does not exist."""


def rank(mode):
    return MODES.index(mode)


def parse(value, where):
    """A mode from a flavor or image value; None when unset."""
    if value is None or value == '':
        return None
    mode = str(value).strip().lower()
    if mode not in MODES:
        raise InvalidMode('%s %s=%r is not one of %s'
                          % (where, KEY, value, ', '.join(MODES)))
    return mode


def wanted(host_mode, flavor_mode=None, image_mode=None):
    """The mode one server asks for on a host.

    :param host_mode: the host's ``[secmig] enforcement``.
    :param flavor_mode: the flavor's ``secmig:enforcement`` (replaces it).
    :param image_mode: the image's ``secmig:enforcement`` (only raises it).
    """
    mode = flavor_mode or host_mode
    if image_mode and rank(image_mode) > rank(mode):
        mode = image_mode
    return mode


@dataclasses.dataclass(frozen=True)
class Decision:
    """Outcome for one migration: go secure, go plain, or refuse."""

    secure: bool
    mode: str
    refusal: str = None
    #: the host(s) that lack secmig, when one does
    lacking: tuple = ()

    @property
    def refused(self):
        return self.refusal is not None


def decide(mode, source_offers, destination_offers, source='the source host',
           destination='the destination host'):
    """Secure, plain or refused, the same on both hosts.

    :param mode: the server's wanted mode (see :func:`wanted`).
    :param source_offers: the source host runs the secmig tunnel (its own
        ``enforcement`` is not ``disabled``).
    :param destination_offers: likewise for the destination host; None when
        it could not be found out (counts as not offered).
    """
    if mode == DISABLED:
        return Decision(False, mode)
    if source_offers and destination_offers:
        return Decision(True, mode)
    missing = tuple(name for name, offers in (
        (source, source_offers), (destination, destination_offers))
        if not offers)
    if mode == PREFERRED:
        return Decision(False, mode, lacking=missing)
    return Decision(False, mode, lacking=missing, refusal=(
        'secmig enforcement is "required" for this server, but %s %s not '
        'offer secure live migration (run compute_driver = '
        'secmig.SecureLibvirtDriver with [secmig] enforcement = preferred or '
        'required there, or pick another host)'
        % (' and '.join(missing), 'does' if len(missing) == 1 else 'do')))
