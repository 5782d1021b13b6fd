"""What a tap on the wire between the hosts sees of a real live migration.

The guest keeps 4 MiB of lines of the image's marker in memory
(tools/lab/guest.sh). ``openstack server migrate --live-migration`` moves
it from lab-cmp-a to lab-cmp-b while tcpdump records every TCP packet on
``lo`` that is not the cloud's control plane (its API, database and
message-bus ports): what one host sends the other. The memory and the disk
crossed, and only inside the tunnel: the marker appears nowhere, not even
in the reassembled streams, and nothing used QEMU's own migration ports.
(tests/functional/lab/test_e2e.py shows, with a plain migration as the
control, that the same capture finds the marker when the stream is not
encrypted.)
"""

import json
import os
import tempfile

from testtools import content
from tools.lab import lab as lab_mod

from tests.functional.cloud import base

MIB = 1024 * 1024
# libvirt's default range for QEMU's own migration listener.
QEMU_MIGRATION_PORTS = (49152, 49215)


class WireTapTest(base.CloudTestCase):

    def test_guest_memory_and_disk_cross_only_inside_the_tunnel(self):
        a, b = self.hosts
        server_id = self.create_server('wire-tap', a)
        self.wait_heartbeat(server_id)
        marker = self.cloud['SECMIG_CLOUD_MARKER'].encode()
        control = sorted(json.loads(self.cloud['SECMIG_CLOUD_PORTS'])
                         .values())
        fd, path = tempfile.mkstemp(prefix='secmig-wire-', suffix='.pcap')
        os.close(fd)
        cap = lab_mod.Capture(path, (), bpf='tcp and not (%s)' % ' or '.join(
            'port %d' % port for port in control)).start()
        self.addCleanup(cap.remove)
        self.addCleanup(cap.stop)
        self.osc('server', 'migrate', '--live-migration', '--host', b,
                 '--wait', server_id, api='2.latest', user=self.operator,
                 project=self.project, fmt=None)
        stats = cap.stop()
        migration = max(self.osc('server', 'migration', 'list', '--server',
                                 server_id, api='2.latest',
                                 project=self.project),
                        key=lambda m: m['Id'])
        self.assertEqual('completed', migration['Status'], migration)

        streams = cap.streams()
        low, high = (int(p) for p in self.cloud[
            'SECMIG_CLOUD_TUNNEL_PORTS_%s' % self.cloud[
                'SECMIG_CLOUD_TRUST_%s' % b.replace('-', '_')].replace(
                    '-', '_')].split('-'))

        def tunnel(key):
            return low <= key[3] <= high or low <= key[1] <= high

        tunnel_bytes = sum(len(v) for k, v in streams.items() if tunnel(k))
        self.addDetail('capture', content.text_content(json.dumps({
            'stats': stats, 'tunnel_bytes': tunnel_bytes,
            'other_streams': {'%s:%d->%s:%d' % k: len(v)
                              for k, v in streams.items()
                              if not tunnel(k)}}, default=str)))
        self.assertEqual(0, stats.get('dropped_by_kernel'), stats)
        # Guest memory and disk crossed: at least the 4 MiB of marker lines.
        self.assertGreater(tunnel_bytes, 4 * MIB)
        # Not once in clear: neither in the raw capture nor in a stream.
        self.assertNotIn(marker, cap.read())
        for key, stream in streams.items():
            self.assertNotIn(marker, stream, key)
            self.assertNotIn(b'SECMIG-HEARTBEAT', stream, key)
        # Nothing went to QEMU's own migration listener.
        self.assertEqual([], [k for k in streams if any(
            QEMU_MIGRATION_PORTS[0] <= p <= QEMU_MIGRATION_PORTS[1]
            for p in (k[1], k[3]))])
