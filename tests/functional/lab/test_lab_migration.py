"""Real libvirt and QEMU: two lab hosts, a plain and a secure live migration.

No mocks and no skips. The class starts one lab (tools/lab: two libvirtds
in their own mount/UTS namespaces, a TCG guest built from Debian's kernel
and busybox) for all its tests; if libvirt cannot start, setUpClass fails
with the reason. The lab needs tools/install-deps.sh (tools/lab/install.sh)
and root.

The secure test is the data plane end to end: a running guest goes from
host a to host b through two real secmig-tunnel processes, the source one
in a's mount namespace and the destination one in b's, with libvirt's
peer-to-peer migration pointed at ``unix:///run/secmig/<id>.sock``; then
back from b to a with the roles swapped.
"""

import json
import os
import re

from testtools import content
from tools.lab import lab as lab_mod

from tests.functional.lab import base

MIB = base.MIB
BEAT_TIMEOUT = base.BEAT_TIMEOUT


class LabMigrationTest(base.LabTestCase):

    def record(self, result):
        self.addDetail('migration-%s-%s-%s' % (result.kind, result.src.name,
                                               result.dst.name),
                       content.text_content(json.dumps(result.summary())))

    # -- tests ---------------------------------------------------------------

    def test_hosts_up_and_guest_heartbeat(self):
        a, b = self.a, self.b
        self.assertEqual('lab-a', a.conn().getHostname())
        self.assertEqual('lab-b', b.conn().getHostname())
        uuids = []
        for host in (a, b):
            caps = host.conn().getCapabilities()
            m = re.search(r'<host>\s*<uuid>([0-9a-f-]+)</uuid>', caps)
            self.assertIsNotNone(m, caps[:500])
            self.assertEqual(host.host_uuid, m.group(1))
            uuids.append(m.group(1))
        self.assertNotEqual(uuids[0], uuids[1])
        own_ns = os.readlink('/proc/self/ns/mnt')
        self.assertEqual(3, len({own_ns, a.mnt_ns, b.mnt_ns}))

        self.boot(a, 'smoke')
        first = self.lab.heartbeats(a, 'smoke')[-1]
        later = self.lab.wait_heartbeat(a, 'smoke', above=first + 1,
                                        timeout=BEAT_TIMEOUT)
        self.assertGreater(later, first)
        serial = self.lab.serial(a, 'smoke')
        self.assertIn(lab_mod.MARKER.encode(), serial)
        self.assertEqual(b'', self.lab.serial(b, 'smoke'))
        # The marker is in guest RAM too (4 MiB of it in a tmpfs).
        memory = self.lab.memory_dump(a, 'smoke')
        self.assertGreater(memory.count(lab_mod.MARKER.encode()), 1000)

    def test_plain_live_migration(self):
        a, b = self.a, self.b
        self.boot(a, 'plain')
        self.lab.wait_heartbeat(a, 'plain', above=2, timeout=BEAT_TIMEOUT)
        mark = self.mark(b, 'plain')
        result = self.lab.migrate_plain(a, b, 'plain')
        self.record(result)
        self.assertRunsOn('plain', b, a)
        self.assertGreater(result.bytes, 10 * MIB)
        self.assertContinued('plain', a, b, mark)

    def test_secure_live_migration_there_and_back(self):
        a, b = self.a, self.b
        self.boot(a, 'secure')
        self.lab.wait_heartbeat(a, 'secure', above=2, timeout=BEAT_TIMEOUT)

        mark = self.mark(b, 'secure')
        there = self.lab.migrate_secure(a, b, 'secure')
        self.record(there)
        self.assertSecure(there, a, b)
        self.assertRunsOn('secure', b, a)
        self.assertContinued('secure', a, b, mark)

        # Back, with b's tunnel as the source and a's as the destination.
        mark = self.mark(a, 'secure')
        back = self.lab.migrate_secure(b, a, 'secure')
        self.record(back)
        self.assertSecure(back, b, a)
        self.assertRunsOn('secure', a, b)
        self.assertContinued('secure', b, a, mark)

    def assertSecure(self, result, src, dst):
        self.assertEqual('unix:///run/secmig/%s.sock' % result.migration_id,
                         result.migrate_uri)
        # Each tunnel ran inside its own host's mount namespace.
        self.assertEqual(src.mnt_ns, result.tunnel_ns['source'])
        self.assertEqual(dst.mnt_ns, result.tunnel_ns['destination'])
        tunnel = self.assertReceipts(result, src, dst)
        self.assertEqual('TLSv1.3', tunnel['tls_version'])
