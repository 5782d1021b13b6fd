"""Faults during a real live migration: nova rolls back, the guest stays.

Each test starts ``openstack server migrate --live-migration`` without
waiting, the domain slowed down beforehand with libvirt's own
``migrate-setspeed`` (so "during the copy" is a state the test can see,
not a race), waits until guest memory is moving through the tunnel, and
then breaks it: the source tunnel process is SIGKILLed, or the operator
runs ``openstack server migration abort``. Whatever breaks, the server is
ACTIVE on its source host with its guest still counting, nova's database
says the source host, the destination has no domain and no disk left,
and both clouds' brokers recorded the end.
"""

import os
import re
import signal
import subprocess
import time

from secmig_nova.tunnel import errors as tunnel_errors
from tests.functional.cloud import base
from tests.functional.cloud import wire

MIB = 1024 * 1024
# Slow enough that the copy lasts minutes, so every check below happens
# while it runs, whatever the machine's load.
SLOW_MIB_PER_S = 1
DATA_PROCESSED = re.compile(r'^Data processed:\s+([0-9.]+) (\w+)', re.M)
UNITS = {'B': 1, 'KiB': 1024, 'MiB': MIB, 'GiB': 1024 * MIB}
WAIT = 240
# Where the man in the middle flips a bit (per connection, source to
# destination): past the handshake, in the stream.
FLIP_AT = 512 * 1024


class FaultTestCase(base.CloudTestCase):

    def virsh(self, host, *args, check=True):
        """``virsh`` against lab host ``host``'s own libvirtd."""
        sock = os.path.join(self.cloud['SECMIG_CLOUD_LAB_DIR'], 'libvirt',
                            host, 'libvirt-sock')
        res = subprocess.run(
            ['virsh', '-c', 'qemu+unix:///system?socket=%s' % sock] +
            list(args), capture_output=True, text=True, timeout=60)
        if check:
            self.assertEqual(0, res.returncode, '%s: %s' % (
                ' '.join(args), res.stderr))
        return res

    def start_migration(self, server_id, dest, user=None):
        """``server migrate --live-migration`` without --wait, slowed.

        The speed limit is set on the domain before the migration starts
        (nova passes no bandwidth, so libvirt applies the domain's): a
        small guest would otherwise be across before the test saw the
        job, on a machine busy enough to make each poll take seconds.
        """
        server = self.server(server_id)
        self.virsh(server['OS-EXT-SRV-ATTR:host'], 'migrate-setspeed',
                   server['OS-EXT-SRV-ATTR:instance_name'],
                   str(SLOW_MIB_PER_S))
        self.osc('server', 'migrate', '--live-migration', '--host', dest,
                 server_id, api='2.latest', user=user or self.operator,
                 project=self.project, fmt=None)

    def latest(self, server_id):
        """The server's newest nova migration, once there is one."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = self.migrations(server_id)
            if found:
                return max(found, key=lambda m: m['Id'])
            time.sleep(1)
        self.fail('no migration of %s within %d s' % (server_id, WAIT))

    def tunnel_ports(self, cloud):
        low, high = self.cloud['SECMIG_CLOUD_TUNNEL_PORTS_%s' % cloud.replace(
            '-', '_')].split('-')
        return int(low), int(high)

    def cloud_of(self, host):
        return self.cloud['SECMIG_CLOUD_TRUST_%s' % host.replace('-', '_')]

    def migrations(self, server_id):
        return self.osc('server', 'migration', 'list', '--server',
                        server_id, api='2.latest', project=self.project)

    def slow_copy(self, server_id, host):
        """Wait until the (slowed) migration job on ``host`` moved data.

        :returns: (domain name, nova migration record).
        """
        domain = self.server(server_id)['OS-EXT-SRV-ATTR:instance_name']
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            info = self.virsh(host, 'domjobinfo', domain, check=False)
            if 'Unbounded' in info.stdout:
                match = DATA_PROCESSED.search(info.stdout)
                if match and float(match[1]) * UNITS[match[2]] > MIB:
                    running = [m for m in self.migrations(server_id)
                               if m['Status'] == 'running']
                    self.assertEqual(1, len(running), running)
                    return domain, running[0]
            time.sleep(0.5)
        self.fail('no migration job moved 1 MiB on %s within %d s: %s'
                  % (host, WAIT, self.migrations(server_id)))

    def wait_final(self, server_id, migration_id, statuses):
        deadline = time.monotonic() + WAIT
        server = {}
        while time.monotonic() < deadline:
            migration = [m for m in self.migrations(server_id)
                         if m['Id'] == migration_id][0]
            if migration['Status'] in statuses:
                server = self.server(server_id)
                if server['status'] == 'ACTIVE' and \
                        server['OS-EXT-STS:task_state'] is None:
                    return migration
            time.sleep(1)
        self.fail('migration %s of %s did not end as %s with the server '
                  'ACTIVE and no task within %d s: %s; server %s, task %s'
                  % (migration_id, server_id, statuses, WAIT,
                     self.migrations(server_id), server.get('status'),
                     server.get('OS-EXT-STS:task_state')))

    def tunnel_pid(self, host, migration_uuid):
        """The tunnel process nova-compute of ``host`` runs for it."""
        conf = 'nova-cpu-%s.conf' % host[len('lab-'):]
        found = []
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    argv = f.read().split(b'\0')
                with open('/proc/%s/stat' % pid) as f:
                    ppid = f.read().rsplit(')', 1)[1].split()[1]
                with open('/proc/%s/cmdline' % ppid, 'rb') as f:
                    parent = f.read()
            except OSError:
                continue
            if b'secmig_nova.cmd.tunnel' in b' '.join(argv) or \
                    any(a.endswith(b'secmig-tunnel') for a in argv):
                if conf.encode() in parent:
                    found.append(int(pid))
        self.assertEqual(1, len(found), 'tunnel processes of %s for %s: %s'
                         % (host, migration_uuid, found))
        return found[0]

    def assertStayedOn(self, server_id, src, dst, domain, beat):
        """ACTIVE on src, guest counting, nothing left on dst."""
        server = self.server(server_id)
        self.assertEqual(('ACTIVE', src), (server['status'],
                                           server['OS-EXT-SRV-ATTR:host']))
        self.assertEqual([[src]], self.sql(
            'nova', "SELECT host FROM instances WHERE uuid='%s'"
            % server_id))
        # The same guest, still running (a reboot would start at 1).
        self.wait_heartbeat(server_id, above=beat)
        self.assertIn(domain, self.virsh(src, 'list', '--name').stdout)
        self.assertNotIn(domain, self.virsh(dst, 'list', '--all',
                                            '--name').stdout)
        self.assertTrue(os.path.exists(self.instance_dir(src, server_id)))
        self.assertFalse(os.path.exists(self.instance_dir(dst, server_id)),
                         'the destination kept the instance directory')

    def broker_states(self, migration_uuid):
        states = {}
        for cloud in ('cloud_a', 'cloud_b'):
            for side, state, reason in self.sql(
                    'secmig_%s' % cloud, "SELECT side, state, reason FROM "
                    "secmig_migrations WHERE id='%s'" % migration_uuid):
                states[side] = (state, reason)
        return states

    def wait_broker_states(self, migration_uuid, expected):
        deadline = time.monotonic() + 60
        states = {}
        while time.monotonic() < deadline:
            states = self.broker_states(migration_uuid)
            if {k: v[0] for k, v in states.items()} == expected:
                return states
            time.sleep(1)
        self.fail('broker records of %s: %s, expected %s'
                  % (migration_uuid, states, expected))

    def wait_broker_final(self, migration_uuid):
        deadline = time.monotonic() + 60
        states = {}
        while time.monotonic() < deadline:
            states = self.broker_states(migration_uuid)
            if set(states) == {'source', 'destination'} and all(
                    v[0] in ('completed', 'failed', 'aborted')
                    for v in states.values()):
                return states
            time.sleep(1)
        self.fail('broker records of %s not final: %s'
                  % (migration_uuid, states))


class SourceTunnelKilledTest(FaultTestCase):

    def test_source_tunnel_killed_mid_stream(self):
        a, b = self.hosts
        server_id = self.create_server('fault-kill', a)
        beat = self.wait_heartbeat(server_id)
        self.start_migration(server_id, b)
        domain, migration = self.slow_copy(server_id, a)
        os.kill(self.tunnel_pid(a, migration['UUID']), signal.SIGKILL)
        migration = self.wait_final(server_id, migration['Id'],
                                    ('error', 'failed'))
        self.assertEqual((a, b), (migration['Source Node'],
                                  migration['Dest Node']))
        self.assertStayedOn(server_id, a, b, domain, beat)
        self.wait_broker_states(migration['UUID'], {'source': 'failed',
                                                    'destination': 'failed'})


class AbortTest(FaultTestCase):

    def test_abort_during_the_copy(self):
        a, b = self.hosts
        server_id = self.create_server('fault-abort', a)
        beat = self.wait_heartbeat(server_id)
        self.start_migration(server_id, b)
        domain, migration = self.slow_copy(server_id, a)
        # Aborting a live migration is an admin's call by default.
        self.osc('server', 'migration', 'abort', server_id,
                 str(migration['Id']), api='2.24', project=self.project,
                 fmt=None)
        migration = self.wait_final(server_id, migration['Id'],
                                    ('cancelled',))
        self.assertStayedOn(server_id, a, b, domain, beat)
        # The source knows libvirt cancelled the job: aborted. The
        # destination only sees its QEMU's socket close when libvirt
        # cancels, so its tunnel may report that (failed,
        # local_endpoint_unavailable) before nova stops it (aborted).
        states = self.wait_broker_final(migration['UUID'])
        self.assertEqual('aborted', states['source'][0], states)
        self.assertIn(states['destination'][0], ('aborted', 'failed'),
                      states)


class ByteFlippedOnTheWireTest(FaultTestCase):

    def test_byte_flipped_on_the_wire(self):
        # A man in the middle of every connection to cloud-b's tunnel
        # ports flips one bit 512 KiB into the source-to-destination
        # stream (TLS records by then: memory is moving).
        a, b = self.hosts
        server_id = self.create_server('fault-flip', a)
        beat = self.wait_heartbeat(server_id)
        proxy = wire.TransparentProxy(
            self.tunnel_ports(self.cloud_of(b)), flip_at=FLIP_AT)
        self.addCleanup(proxy.close)
        self.start_migration(server_id, b)
        domain = self.server(server_id)['OS-EXT-SRV-ATTR:instance_name']
        migration = self.wait_final(server_id, self.latest(server_id)['Id'],
                                    ('error', 'failed'))
        self.assertTrue(proxy.flipped, 'no connection reached the offset: '
                        '%s' % proxy.forwarded)
        self.assertStayedOn(server_id, a, b, domain, beat)
        states = self.wait_broker_states(migration['UUID'], {
            'source': 'failed', 'destination': 'failed'})
        # The destination detected the flipped bit; the source can only
        # know that the peer detected tampering or the path was cut.
        self.assertIn('stream_tampered', states['destination'][1], states)
        self.assertTrue(any(reason in states['source'][1]
                            for reason in tunnel_errors.PEER_DETECTED_OR_CUT),
                        states)


class ForceCompletePostCopyTest(FaultTestCase):
    """``server migration force complete`` with post-copy permitted.

    The cloud's computes run with ``[libvirt]
    live_migration_permit_post_copy = True``: force-complete switches the
    running (slowed) migration to post-copy, the guest runs on lab-cmp-b
    and pulls its remaining pages back through the tunnel.
    """

    def test_force_complete_switches_to_post_copy(self):
        a, b = self.hosts
        server_id = self.create_server('fault-postcopy', a)
        beat = self.wait_heartbeat(server_id)
        self.start_migration(server_id, b)
        domain, migration = self.slow_copy(server_id, a)
        log = self.log_file('nova-compute-cmp-a')
        offset = os.path.getsize(log)
        # Forcing completion is an admin's call by default.
        self.osc('server', 'migration', 'force', 'complete', server_id,
                 str(migration['Id']), api='2.22', project=self.project,
                 fmt=None)
        migration = self.wait_final(server_id, migration['Id'],
                                    ('completed',))
        server = self.server(server_id)
        self.assertEqual(('ACTIVE', b), (server['status'],
                                         server['OS-EXT-SRV-ATTR:host']))
        # The same guest, still counting on b.
        self.wait_heartbeat(server_id, above=beat)
        self.assertIn(domain, self.virsh(b, 'list', '--name').stdout)
        self.assertNotIn(domain, self.virsh(a, 'list', '--all',
                                            '--name').stdout)
        with open(log) as f:
            f.seek(offset)
            self.assertIn('Switching to post-copy migration mode', f.read())
        states = self.wait_broker_final(migration['UUID'])
        self.assertEqual({'source': 'completed', 'destination': 'completed'},
                         {k: v[0] for k, v in states.items()}, states)
