"""What every real-libvirt lab test class shares.

One lab (tools/lab: two libvirtds in their own mount/UTS namespaces, TCG
guests built from Debian's kernel and busybox) per test class; if libvirt
cannot start, setUpClass fails with the reason (no skips). The lab needs
tools/install-deps.sh (tools/lab/install.sh) and root.
"""

import json
import uuid

import testtools
from testtools import content
from tools.lab import lab as lab_mod

from secmig_nova.authz import tokens
from secmig_nova.trust import store

MIB = 1 << 20
# Upper bounds of waits on the guest's serial log (a TCG guest booting,
# heartbeats once a second), generous for a busy machine.
BOOT_TIMEOUT = 240
BEAT_TIMEOUT = 90


def unique_marker():
    """A marker nothing else on this machine contains (45 characters)."""
    return '%s-%s' % (lab_mod.MARKER, uuid.uuid4().hex[:16])


class LabTestCase(testtools.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.lab = lab_mod.Lab.temporary()
        try:
            cls.lab.start()
        except BaseException:
            cls.lab.teardown()
            raise
        cls.a = cls.lab.host('a')
        cls.b = cls.lab.host('b')

    @classmethod
    def tearDownClass(cls):
        cls.lab.teardown()
        super().tearDownClass()

    # -- guests ---------------------------------------------------------------

    def boot(self, host, name, marker=None):
        """Boot a guest on host; wait for two heartbeats; its marker.

        The guest's serial logs on both hosts are attached to the result.
        """
        marker = marker or unique_marker()
        self.addCleanup(self.lab.destroy_guest, name)
        self.lab.start_guest(host, name, marker=marker)
        for each in (self.a, self.b):
            self.addDetail('%s-serial-%s' % (name, each.name),
                           content.Content(content.UTF8_TEXT,
                                           lambda h=each: [self.lab.serial(
                                               h, name)[-3000:]]))
        self.lab.wait_heartbeat(host, name, above=1, timeout=BOOT_TIMEOUT)
        self.assertIn(('marker=%s ' % marker).encode(),
                      self.lab.serial(host, name))
        return marker

    def mark(self, host, name):
        """Length of host's serial log of name (heartbeats after it)."""
        return len(self.lab.serial(host, name))

    def attach(self, name, value):
        self.addDetail(name, content.text_content(
            value if isinstance(value, str)
            else json.dumps(value, default=str, indent=1)))

    # -- where the guest runs -------------------------------------------------

    def assertRunsOn(self, name, host, other):
        self.assertIsNone(other.domain(name),
                          '%s still defined on %s' % (name, other.name))
        dom = host.domain(name)
        self.assertIsNotNone(dom, '%s not on %s' % (name, host.name))
        self.assertTrue(dom.isActive())

    def assertContinued(self, name, src, dst, mark):
        """The guest goes on in dst's serial log where it left src.

        mark: length of dst's log before the migration. A rebooted guest
        would print SECMIG-LAB-BOOTED and count from 1 again.
        """
        last_on_src = self.lab.heartbeats(src, name)[-1]
        self.lab.wait_heartbeat(dst, name, timeout=BEAT_TIMEOUT, since=mark)
        first = self.lab.heartbeats(dst, name, since=mark)[0]
        # +2: a heartbeat line cut in two by the switch-over is lost.
        self.assertTrue(last_on_src < first <= last_on_src + 2,
                        'last heartbeat on %s %d, first on %s %d'
                        % (src.name, last_on_src, dst.name, first))
        self.assertNotIn(lab_mod.BOOTED, self.lab.serial(dst, name)[mark:])
        newest = self.lab.wait_heartbeat(dst, name, above=first + 1,
                                         timeout=BEAT_TIMEOUT, since=mark)
        self.assertGreater(newest, first)
        return newest

    def assertStillOnSource(self, name, src, dst, dst_mark):
        """A failed migration left the guest running on src, unharmed."""
        libvirt = lab_mod._libvirt()
        self.assertIsNone(dst.domain(name),
                          '%s is defined on %s after the failed migration'
                          % (name, dst.name))
        dom = src.domain(name)
        self.assertIsNotNone(dom, '%s is gone from %s' % (name, src.name))
        self.assertTrue(dom.isActive())
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING, dom.state()[0])
        # The heartbeat keeps rising in src's log (two more beats).
        last = self.lab.heartbeats(src, name)[-1]
        newest = self.lab.wait_heartbeat(src, name, above=last + 1,
                                         timeout=BEAT_TIMEOUT)
        self.assertGreater(newest, last)
        # Never restarted; nothing ran on dst.
        self.assertEqual(1, self.lab.serial(src, name).count(lab_mod.BOOTED))
        self.assertEqual([], self.lab.heartbeats(dst, name, since=dst_mark))

    def assertNoTunnelLeft(self):
        """No tunnel process and no socket file on either host."""
        for host in (self.a, self.b):
            self.assertEqual([], host.tunnel_pids(),
                             'tunnel processes left on %s' % host.name)
            self.assertEqual([], host.socket_files(),
                             'files left in %s on %s'
                             % (lab_mod.SOCKET_DIR, host.name))

    def assertReceipts(self, result, src, dst, instance_uuid=None):
        """Both tunnels completed; both receipts verify, agree, name it.

        ``result``: a lab ``Migration`` of one connection. Returns the
        source tunnel's connection record.
        """
        conns = {}
        for side in ('source', 'destination'):
            rc, outcome = result.tunnels[side]
            self.assertEqual((0, 'completed'), (rc, outcome['status']),
                             '%s tunnel: %s\n%s' % (
                                 side, outcome,
                                 result.tunnel_stderr.get(side, '')[-2000:]))
            self.assertEqual(1, len(outcome['connections']))
            conns[side] = outcome['connections'][0]
        s, d = conns['source'], conns['destination']
        self.assertEqual(s['src_to_dst'], d['src_to_dst'])
        self.assertEqual(s['dst_to_src'], d['dst_to_src'])
        self.assertGreater(s['src_to_dst']['bytes'], 10 * MIB)
        # Both receipts verify against their clouds' CAs and agree.
        src_claims, _ = tokens.verify_receipt(
            s['source_receipt'], self.trust_store(src),
            expected_fingerprint=s['src_fingerprint'])
        dst_claims, _ = tokens.verify_receipt(
            d['destination_receipt'], self.trust_store(dst),
            expected_fingerprint=d['dst_fingerprint'])
        for claims in (src_claims, dst_claims):
            self.assertEqual(s['src_to_dst'], claims['src_to_dst'])
            self.assertEqual(result.migration_id, claims['migration_id'])
            if instance_uuid is not None:
                self.assertEqual(instance_uuid, claims['instance_uuid'])
        return s

    def trust_store(self, host):
        trust = self.lab.pki.trust(host.name)
        return store.TrustStore.load(trust['cloud_id'], trust['ca_file'])
