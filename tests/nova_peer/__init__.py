"""nova's own functional live-migration tests with SecureLibvirtDriver.

Their own stestr run (``tools/run-nova-peer-tests.sh``); the project's
main run does not load them (see gate.py).
"""

from tests.nova_peer import gate


def load_tests(loader, standard_tests, pattern):
    return gate.load_tests(__file__, loader, standard_tests, pattern)
