"""The committed configuration sample matches the options in code."""

import os
import subprocess
import sys
import tempfile

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(ROOT, 'etc', 'secmig-nova',
                              'secmig-nova-config-generator.conf')
SAMPLE = os.path.join(ROOT, 'etc', 'secmig-nova', 'secmig-nova.conf.sample')


class TestConfigSample(testtools.TestCase):

    def test_sample_is_current(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'sample')
            subprocess.run(
                [sys.executable, '-m', 'oslo_config.generator',
                 '--config-file', GENERATOR_CONF, '--output-file', out],
                check=True, cwd=ROOT, capture_output=True)
            with open(out) as f:
                generated = f.read()
        with open(SAMPLE) as f:
            committed = f.read()
        self.assertEqual(
            committed, generated,
            'etc/secmig-nova/secmig-nova.conf.sample is stale: run '
            '"tox -e genconfig" (or oslo-config-generator --config-file %s)'
            % os.path.relpath(GENERATOR_CONF, ROOT))
