"""The committed configuration samples match the options in code."""

import os
import subprocess
import sys
import tempfile

import testtools

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ETC = os.path.join(ROOT, 'etc', 'secmig-nova')
# (generator configuration, the sample it writes)
SAMPLES = [
    (os.path.join(ETC, 'secmig-nova-config-generator.conf'),
     os.path.join(ETC, 'secmig-nova.conf.sample')),
    (os.path.join(ETC, 'secmig-migrate-config-generator.conf'),
     os.path.join(ETC, 'secmig-migrate.conf.sample')),
]


class TestConfigSample(testtools.TestCase):

    def test_sample_is_current(self):
        self.assertSampleCurrent(*SAMPLES[0])

    def test_secmig_migrate_sample_is_current(self):
        self.assertSampleCurrent(*SAMPLES[1])

    def assertSampleCurrent(self, generator_conf, sample):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, 'sample')
            subprocess.run(
                [sys.executable, '-m', 'oslo_config.generator',
                 '--config-file', generator_conf, '--output-file', out],
                check=True, cwd=ROOT, capture_output=True)
            with open(out) as f:
                generated = f.read()
        with open(sample) as f:
            committed = f.read()
        self.assertEqual(
            committed, generated,
            '%s is stale: run "tox -e genconfig" (or oslo-config-generator '
            '--config-file %s)' % (os.path.relpath(sample, ROOT),
                                   os.path.relpath(generator_conf, ROOT)))
