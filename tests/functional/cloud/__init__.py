"""Tests against the real one-machine OpenStack (tools/cloud/cloud.sh).

They drive the ``openstack`` CLI as a subprocess against a running cloud,
found through the env file its ``up`` writes (``$SECMIG_CLOUD_ENV``,
default ``<repo>/.cloud/cloud.env``). Bringing the cloud up takes minutes
and needs the whole machine, so they run as their own suite
(``tools/run-tests.sh cloud``, part of the default run, through
``tools/cloud/run-tests.sh``: up, these tests, down); the main suite
excludes them. A cloud that is not up fails every test with the reason;
they never skip.
"""
