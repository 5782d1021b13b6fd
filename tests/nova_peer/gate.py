"""Keeps nova's test framework out of the project's main stestr run.

Importing ``nova.tests`` patches the importing process (eventlet
monkey-patching unless ``OS_NOVA_DISABLE_EVENTLET_PATCHING`` is set, plus
fixtures that reset global configuration), and stestr's discovery imports
every test module in every worker. The packages that run tests inside
nova's framework (tests/nova_peer, tests/functional/nova) therefore define
``load_tests`` through :func:`load_tests`: without ``SECMIG_NOVA_TESTS=1``
they contribute no test and import nothing from nova. With it (set by
tools/run-nova-peer-tests.sh) they discover their modules as usual.
"""

import os
import sys

ENV = 'SECMIG_NOVA_TESTS'


def enabled():
    return os.environ.get(ENV) == '1'


def load_tests(package_file, loader, standard_tests, pattern):
    if not enabled():
        return standard_tests
    # nova's functional API fixture reads its paste pipeline from here
    # when nova runs from an installed wheel (no source tree).
    os.environ.setdefault('OS_WSGI__API_PASTE_CONFIG', os.path.join(
        sys.prefix, 'etc', 'nova', 'api-paste.ini'))
    standard_tests.addTests(loader.discover(
        start_dir=os.path.dirname(os.path.abspath(package_file)),
        pattern=pattern or 'test*.py'))
    return standard_tests
