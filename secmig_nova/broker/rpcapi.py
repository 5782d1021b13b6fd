"""Client side of the broker RPC API.

API version history:

* 1.0 - Initial version: authorize_migration, register_incoming,
        request_grant, forward_grant, record_receipt, get_migration,
        list_migrations. Every method takes one argument,
        ``envelope_token``: a signed envelope (secmig_nova/broker/envelope.py)
        whose payload carries the request.

New arguments must be guarded with ``can_send_version()`` and a version
bump here; the server's ``target`` in manager.py advertises the version.
"""

import oslo_messaging as messaging

from secmig_nova.broker import envelope

RPC_API_VERSION = '1.0'
DEFAULT_TOPIC = 'secmig_broker'
# Explicit, so brokers, compute hosts and peer brokers agree whatever
# their control_exchange setting is.
EXCHANGE = 'secmig'


class BrokerRefused(Exception):
    """The broker refused a request; ``reason`` names why."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    def __str__(self):
        return '%s: %s' % (self.reason, self.args[0])


class BrokerAPI:
    """Calls one broker (this cloud's, or a peer's) over oslo.messaging.

    :param transport: an oslo.messaging RPC transport.
    :param version_cap: highest version to send (rolling upgrades).
    :param timeout: seconds before a call fails with MessagingTimeout.
    """

    def __init__(self, transport, topic=DEFAULT_TOPIC, version_cap=None,
                 timeout=30):
        target = messaging.Target(exchange=EXCHANGE, topic=topic,
                                  version=RPC_API_VERSION)
        self.client = messaging.get_rpc_client(
            transport, target, version_cap=version_cap or RPC_API_VERSION,
            timeout=timeout)

    def _call(self, method, token):
        cctxt = self.client.prepare(version='1.0')
        return cctxt.call({}, method, envelope_token=token)

    def authorize_migration(self, token):
        return self._call('authorize_migration', token)

    def register_incoming(self, token):
        return self._call('register_incoming', token)

    def request_grant(self, token):
        return self._call('request_grant', token)

    def forward_grant(self, token):
        return self._call('forward_grant', token)

    def record_receipt(self, token):
        return self._call('record_receipt', token)

    def get_migration(self, token):
        return self._call('get_migration', token)

    def list_migrations(self, token):
        return self._call('list_migrations', token)


def checked(answer):
    """Raise BrokerRefused for an ``{'error': ...}`` answer."""
    if not isinstance(answer, dict):
        raise BrokerRefused('bad_answer', 'broker answered %r' % (answer,))
    if 'error' in answer:
        raise BrokerRefused(answer['error'], answer.get('message', ''))
    return answer


class HostClient:
    """A compute host's (or ``secmig-migrate``'s) view of its broker.

    Seals every request with the host's credentials so the broker can tell
    which host asks, whatever the message bus carries.
    """

    def __init__(self, api, credentials, max_age=envelope.DEFAULT_MAX_AGE):
        self.api = api
        self.credentials = credentials
        self.cloud_id = credentials.identity.cloud_id
        self.max_age = max_age

    def _send(self, method, payload):
        token = envelope.seal(self.credentials, self.cloud_id, method,
                              payload, max_age=self.max_age)
        limit = envelope.max_bytes(method)
        if len(token) > limit:
            # The broker would refuse it unread: say so here, unsent.
            raise BrokerRefused(envelope.TOO_LARGE,
                                '%s request of %d bytes exceeds the '
                                'envelope cap of %d; not sent'
                                % (method, len(token), limit))
        try:
            answer = getattr(self.api, method)(token)
        except messaging.MessagingTimeout as e:
            raise BrokerRefused('broker_unavailable',
                                'broker of cloud %s did not answer: %s'
                                % (self.cloud_id, e))
        except messaging.MessagingException as e:
            raise BrokerRefused('broker_unavailable',
                                'broker of cloud %s unreachable: %s'
                                % (self.cloud_id, e))
        return checked(answer)

    def authorize_migration(self, migration_id, instance_uuid, dst_host,
                            dst_cloud, token=None, user_id=None,
                            project_id=None):
        payload = {'migration_id': migration_id,
                   'instance_uuid': instance_uuid, 'dst_host': dst_host,
                   'dst_cloud': dst_cloud}
        if token:
            payload['token'] = token
        else:
            payload.update(user_id=user_id, project_id=project_id)
        return self._send('authorize_migration', payload)

    def register_incoming(self, migration_id, endpoint, streams,
                          instance_uuid=None):
        return self._send('register_incoming', {
            'migration_id': migration_id, 'endpoint': endpoint,
            'streams': streams, 'instance_uuid': instance_uuid})

    def request_grant(self, migration_id, ticket, streams):
        return self._send('request_grant', {
            'migration_id': migration_id, 'ticket': ticket,
            'streams': streams})

    def record_receipt(self, migration_id, status, connections=(),
                       reason=None):
        """Report a migration's end, with receipts of ``connections``.

        Send one connection per request: an envelope has room for one
        source and one destination receipt (see envelope.max_bytes).
        """
        return self._send('record_receipt', {
            'migration_id': migration_id, 'status': status,
            'reason': reason,
            'connections': [
                {'source_receipt': c.get('source_receipt'),
                 'destination_receipt': c.get('destination_receipt')}
                for c in connections]})

    def get_migration(self, migration_id):
        return self._send('get_migration', {'migration_id': migration_id})

    def list_migrations(self, project_id=None, state=None, limit=100):
        return self._send('list_migrations', {
            'project_id': project_id, 'state': state, 'limit': limit})
