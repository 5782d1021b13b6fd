"""The cloud is up: computes, hypervisors, image, neutron (real CLI)."""

from tests.functional.cloud import base


class SmokeTest(base.CloudTestCase):

    def test_both_computes_up(self):
        services = self.osc('compute', 'service', 'list', '--service',
                            'nova-compute')
        states = {s['Host']: (s['Status'], s['State']) for s in services}
        self.assertEqual({h: ('enabled', 'up') for h in self.hosts}, states)

    def test_two_hypervisors(self):
        hypervisors = self.osc('hypervisor', 'list')
        self.assertEqual(
            sorted((h, 'QEMU', 'up') for h in self.hosts),
            sorted((h['Hypervisor Hostname'], h['Hypervisor Type'],
                    h['State']) for h in hypervisors))

    def test_image_active(self):
        image = self.osc('image', 'show', self.cloud['SECMIG_CLOUD_IMAGE'])
        self.assertEqual('active', image['status'])
        props = image['properties']
        for prop in ('kernel_id', 'ramdisk_id'):
            self.assertEqual('active', self.osc('image', 'show',
                                                props[prop])['status'])

    def test_neutron_answers(self):
        self.assertEqual([], self.osc('network', 'list'))
        aliases = {e['Alias'] for e in self.osc('extension', 'list',
                                                '--network')}
        self.assertIn('binding', aliases)

    def test_flavor_requires_secmig(self):
        flavor = self.osc('flavor', 'show', self.cloud['SECMIG_CLOUD_FLAVOR'])
        self.assertEqual('required',
                         flavor['properties']['secmig:enforcement'])
