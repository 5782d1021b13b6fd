"""secmig's functional tests inside nova's own functional test framework.

They import ``nova.tests``, which patches the whole process (eventlet
monkey-patching, global configuration resets), so they never run in the
project's main stestr run: discovery of this package yields nothing unless
``SECMIG_NOVA_TESTS=1``. Run them as their own stestr run with
``tools/run-nova-peer-tests.sh functional``.
"""

from tests.nova_peer import gate


def load_tests(loader, standard_tests, pattern):
    return gate.load_tests(__file__, loader, standard_tests, pattern)
