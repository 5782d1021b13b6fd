"""The wire between the cloud's hosts: a tap and a man in the middle.

The lab hosts of the cloud share the machine's network namespace, so every
byte one host sends another crosses the loopback interface: tcpdump on
``lo`` sees what a tap on the wire would, and a NAT rule on loopback
traffic puts a proxy in the path without any host knowing. Both act only
on the cloud's own ports, and are removed when the test ends.
"""

import socket
import subprocess
import uuid

from tests.functional import tunnel_harness

# SO_ORIGINAL_DST (linux/netfilter_ipv4.h): where a REDIRECTed connection
# was going.
SO_ORIGINAL_DST = 80
# The proxy's own connections carry this mark, which the NAT rule skips.
MARK = 0x5ec
IPTABLES = 'iptables-legacy'


class WireError(Exception):
    pass


def _iptables(*args):
    try:
        res = subprocess.run([IPTABLES, '-w', '5'] + list(args),
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise WireError('%s is not installed (apt-get install iptables; '
                        'tools/cloud/install.sh does it)' % IPTABLES)
    if res.returncode != 0:
        raise WireError('%s %s failed: %s'
                        % (IPTABLES, ' '.join(args), res.stderr.strip()))


class TransparentProxy(tunnel_harness.Proxy):
    """A man in the middle of every connection to ``ports`` on loopback.

    A NAT rule redirects locally made TCP connections to 127.0.0.1 on the
    port range ``ports`` (low, high) to this proxy, which connects on to
    the address each one was going to. ``flip_at``/``cut_at`` as for
    :class:`tunnel_harness.Proxy`, per connection.
    """

    def __init__(self, ports, flip_at=None, cut_at=None):
        super().__init__(flip_at=flip_at, cut_at=cut_at)
        self.comment = 'secmig-test-%s' % uuid.uuid4().hex[:12]
        port = int(self.endpoint.rsplit(':', 1)[1])
        self._rule = ['OUTPUT', '-t', 'nat', '-p', 'tcp', '-d', '127.0.0.1',
                      '--dport', '%d:%d' % tuple(ports), '-m', 'mark', '!',
                      '--mark', '%#x' % MARK, '-m', 'comment', '--comment',
                      self.comment, '-j', 'REDIRECT', '--to-ports',
                      str(port)]
        self.installed = False
        try:
            _iptables('-I', *self._rule)
        except Exception:
            super().close()
            raise
        self.installed = True

    def _connect_upstream(self, client):
        raw = client.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = int.from_bytes(raw[2:4], 'big')
        host = socket.inet_ntoa(raw[4:8])
        upstream = socket.socket()
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        upstream.settimeout(30)
        upstream.connect((host, port))
        upstream.settimeout(None)
        return upstream

    def close(self):
        if self.installed:
            _iptables('-D', *self._rule)
            self.installed = False
        super().close()
