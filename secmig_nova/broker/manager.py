"""The broker's RPC endpoint: authorize, register, grant, audit.

Flow of one migration (DESIGN.md §3; paper steps 3–6)::

    source host --authorize_migration--> source broker   (ticket)
    dest host   --register_incoming----> dest broker     (endpoint, fp)
    source host --request_grant--------> source broker
                   source broker --forward_grant--> dest broker  (grant)
    hosts       --record_receipt-------> their brokers   (audit)

Every request is a signed envelope (secmig_nova/broker/envelope.py): hosts
sign with their host certificate, brokers with their broker certificate, so
nothing on the message bus is trusted. Refusals are returned, not raised, as
``{'error': reason, 'message': text}`` with a named reason, and logged; the
client turns them into :class:`~secmig_nova.broker.rpcapi.BrokerRefused`.
"""

import time
import uuid

from oslo_log import log as logging
import oslo_messaging as messaging
from oslo_policy import policy as oslo_policy

from secmig_nova.authz import keystone
from secmig_nova.authz import policies
from secmig_nova.authz import replay
from secmig_nova.authz import tickets
from secmig_nova.authz import tokens
from secmig_nova.broker.db import api as db_api
from secmig_nova.broker.db import models
from secmig_nova.broker import envelope
from secmig_nova.trust import errors as trust_errors
from secmig_nova.tunnel import errors as tunnel_errors
from secmig_nova.tunnel import receipts

LOG = logging.getLogger(__name__)
_peer_text = tunnel_errors.peer_text

RATE_WINDOW = 60.0
# list_migrations: records per answer when the caller names no limit, and
# the most it may ask for.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# record_receipt: an envelope has room for one connection's two receipts.
MAX_PAIRS_PER_REPORT = envelope.EMBEDDED_TOKENS['record_receipt'] // 2
_TOKEN_FIELDS = ('ticket', 'token')


class Refused(Exception):
    """A request was refused; becomes the ``error`` answer."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _answer(method):
    """Turn Refused (and unexpected errors) into logged error answers."""
    def wrapper(self, ctxt, **kwargs):
        try:
            return method(self, ctxt, **kwargs)
        except Refused as e:
            LOG.warning('%s refused (%s): %s', method.__name__, e.reason,
                        e.args[0])
            return {'error': e.reason, 'message': str(e.args[0])}
        except Exception as e:  # noqa: fail closed, never a partial allow
            LOG.exception('%s failed', method.__name__)
            return {'error': 'internal_error', 'message': repr(e)}
    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return messaging.expose(wrapper)


class PeerConfig:
    """What this cloud lets one peer cloud do (``[secmig_peer_<id>]``)."""

    def __init__(self, cloud_id, store, allowed_projects=(),
                 allowed_roles=('migration_operator',), max_concurrent=5,
                 rate=30, client=None):
        self.cloud_id = cloud_id
        self.store = store
        self.allowed_projects = set(allowed_projects)
        self.allowed_roles = set(allowed_roles)
        self.max_concurrent = max_concurrent
        self.rate = rate
        self.client = client


class BrokerManager:
    """RPC endpoint of one cloud's broker.

    :param credentials: the broker's Credentials (signs tickets, grants,
        envelopes).
    :param own_store: TrustStore of this cloud (hosts and brokers).
    :param peers: ``{cloud_id: PeerConfig}``.
    :param keystone_client: KeystoneClient (token validation, roles).
    :param enforcer: oslo.policy Enforcer with secmig's rules.
    """

    target = messaging.Target(version='1.0')

    def __init__(self, credentials, own_store, db, keystone_client, enforcer,
                 peers=None, ticket_ttl=120, grant_ttl=300,
                 registration_ttl=900, envelope_max_age=60,
                 project_max_concurrent=10, project_rate=60,
                 clock=time.time):
        self.credentials = credentials
        self.cloud_id = credentials.identity.cloud_id
        self.own_store = own_store
        self.db = db
        self.replay_store = db_api.DatabaseReplayStore(db, clock=clock)
        self.keystone = keystone_client
        self.enforcer = enforcer
        self.peers = dict(peers or {})
        self.ticket_ttl = ticket_ttl
        self.grant_ttl = grant_ttl
        self.registration_ttl = registration_ttl
        self.envelope_max_age = envelope_max_age
        self.project_max_concurrent = project_max_concurrent
        self.project_rate = project_rate
        self.clock = clock

    # -- helpers ---------------------------------------------------------

    def _stores(self):
        stores = {c: p.store for c, p in self.peers.items()}
        stores[self.cloud_id] = self.own_store
        return stores

    def _open(self, token, method, role, stores=None):
        try:
            return envelope.open_envelope(
                token, stores or {self.cloud_id: self.own_store},
                self.cloud_id, method, self.replay_store, role,
                max_age=self.envelope_max_age, now=self.clock())
        except envelope.EnvelopeError as e:
            raise Refused(e.reason, str(e))

    @staticmethod
    def _require(payload, *names):
        for name in names:
            value = payload.get(name)
            limit = tokens.MAX_TOKEN_BYTES if name in _TOKEN_FIELDS else 255
            if not isinstance(value, str) or not value or len(value) > limit:
                raise Refused('bad_request', '%s must be a non-empty '
                              'string of at most %d characters'
                              % (name, limit))

    # -- source side -----------------------------------------------------

    @_answer
    def authorize_migration(self, ctxt, envelope_token):
        """Authorize a migration requested by a source host; ticket."""
        payload, _claims, host = self._open(envelope_token,
                                            'authorize_migration', 'host')
        self._require(payload, 'migration_id', 'instance_uuid', 'dst_host',
                      'dst_cloud')
        src_host = host.identity.name
        dst_cloud = payload['dst_cloud']
        if dst_cloud != self.cloud_id and dst_cloud not in self.peers:
            raise Refused('unknown_cloud', 'destination cloud %s is not a '
                          'configured peer' % dst_cloud)
        creds = self._caller_creds(payload)
        project_id = creds.get('project_id')
        action = policies.MIGRATE_LIVE if dst_cloud == self.cloud_id \
            else policies.MIGRATE_LIVE_CROSS_CLOUD
        try:
            roles = policies.authorize(self.enforcer, action,
                                       {'project_id': project_id}, creds)
        except (oslo_policy.PolicyNotAuthorized,
                oslo_policy.InvalidScope) as e:
            raise Refused('missing_role', 'user %s on project %s may not %s:'
                          ' %s' % (creds.get('user_id'), project_id, action,
                                   e))
        ticket = tickets.issue_ticket(
            self.credentials, user_id=creds['user_id'],
            project_id=project_id, roles=roles,
            instance_uuid=payload['instance_uuid'], src_host=src_host,
            dst_host=payload['dst_host'], dst_cloud=dst_cloud,
            ttl=self.ticket_ttl, now=self.clock())
        claims = tokens.unverified_claims(ticket)
        try:
            self.db.create_migration(
                payload['migration_id'], 'source', models.AUTHORIZED,
                instance_uuid=payload['instance_uuid'],
                project_id=project_id, user_id=creds['user_id'],
                src_cloud=self.cloud_id, src_host=src_host,
                src_fingerprint=host.fingerprint, dst_cloud=dst_cloud,
                dst_host=payload['dst_host'], ticket_jti=claims['jti'],
                reason='authorized by roles %s' % ', '.join(roles))
        except db_api.InvalidTransition:
            raise Refused('duplicate_migration', 'migration %s already '
                          'exists' % payload['migration_id'])
        LOG.info('Migration %s of instance %s authorized: %s -> %s/%s for '
                 'user %s project %s', payload['migration_id'],
                 payload['instance_uuid'], src_host, dst_cloud,
                 payload['dst_host'], creds['user_id'], project_id)
        return {'migration_id': payload['migration_id'], 'ticket': ticket,
                'roles': roles}

    def _caller_creds(self, payload):
        """Who asks, as oslo.policy credentials.

        A validated user token (the authentication ticket) or, for a
        compute host acting on a request nova-api already authorized, the
        user and project it names; roles always come from Keystone.
        """
        token = payload.get('token')
        try:
            if token:
                ticket = self.keystone.validate_token(token)
                return ticket.policy_creds()
            self._require(payload, 'user_id', 'project_id')
            return {'user_id': payload['user_id'],
                    'project_id': payload['project_id']}
        except keystone.KeystoneError as e:
            raise Refused(e.reason, 'authentication failed: %s' % e)

    @_answer
    def request_grant(self, ctxt, envelope_token):
        """A source host asks for the destination's grant."""
        payload, _claims, host = self._open(envelope_token, 'request_grant',
                                            'host')
        self._require(payload, 'migration_id', 'ticket')
        mid = payload['migration_id']
        try:
            record = self.db.get_migration(mid, 'source')
        except db_api.NotFound:
            raise Refused('not_authorized', 'migration %s was not '
                          'authorized here' % mid)
        if record['state'] != models.AUTHORIZED:
            raise Refused('bad_state', 'migration %s is %s, not an '
                          'authorized source migration'
                          % (mid, record['state']))
        if host.fingerprint != record['src_fingerprint']:
            raise Refused('wrong_host', 'migration %s was authorized for '
                          'another source host' % mid)
        try:
            ticket_jti = tokens.unverified_claims(payload['ticket']).get(
                'jti')
        except tokens.TokenError as e:
            raise Refused(e.reason, 'ticket unreadable: %s' % e)
        if ticket_jti != record['ticket_jti']:
            raise Refused('ticket_mismatch', 'the ticket is not the one '
                          'issued for migration %s' % mid)
        streams = payload.get('streams') or {'memory': 1}
        sealed = envelope.seal(
            self.credentials, record['dst_cloud'], 'forward_grant',
            {'migration_id': mid, 'ticket': payload['ticket'],
             'src_host': record['src_host'],
             'src_fingerprint': record['src_fingerprint'],
             'streams': streams},
            max_age=self.envelope_max_age, now=self.clock())
        if record['dst_cloud'] == self.cloud_id:
            answer = self.forward_grant(ctxt, envelope_token=sealed)
        else:
            answer = self._forward_to_peer(record['dst_cloud'], sealed)
        if 'error' in answer:
            self.db.transition(
                mid, 'source', models.FAILED,
                reason='%s: %s' % (answer['error'], answer.get('message')))
            raise Refused(answer['error'], 'destination cloud %s refused: '
                          '%s' % (record['dst_cloud'],
                                  answer.get('message')))
        grant = self._check_grant(answer.get('grant'), record)
        self.db.transition(
            mid, 'source', models.GRANTED, grant_jti=grant.jti,
            dst_fingerprint=grant.dst_fingerprint,
            dst_endpoint=grant.dst_endpoint, streams=grant.streams,
            reason='grant %s from %s' % (grant.jti, grant.dst_cloud))
        return {'grant': grant.token, 'dst_endpoint': grant.dst_endpoint}

    def _forward_to_peer(self, cloud_id, sealed):
        peer = self.peers[cloud_id]
        try:
            return peer.client.forward_grant(sealed)
        except messaging.MessagingTimeout:
            return {'error': 'peer_unavailable',
                    'message': 'broker of cloud %s did not answer in time'
                               % cloud_id}
        except messaging.MessagingException as e:
            return {'error': 'peer_unavailable',
                    'message': 'broker of cloud %s unreachable: %s'
                               % (cloud_id, e)}

    def _check_grant(self, token, record):
        store = self._stores()[record['dst_cloud']]
        try:
            grant = tokens.verify_grant(token, store, now=self.clock())
        except (tokens.TokenError, trust_errors.TrustError) as e:
            raise Refused('bad_grant', 'grant from %s refused: %s'
                          % (record['dst_cloud'], e))
        if grant.migration_id != record['id'] or \
                grant.src_fingerprint != record['src_fingerprint']:
            raise Refused('bad_grant', 'grant does not match migration %s'
                          % record['id'])
        return grant

    # -- destination side ------------------------------------------------

    @_answer
    def register_incoming(self, ctxt, envelope_token):
        """A destination host registers its tunnel for a migration."""
        payload, _claims, host = self._open(envelope_token,
                                            'register_incoming', 'host')
        self._require(payload, 'migration_id', 'endpoint')
        streams = payload.get('streams') or {'memory': 1}
        if not isinstance(streams, dict) or not streams:
            raise Refused('bad_request', 'streams must be an object')
        now = self.clock()
        try:
            self.db.create_migration(
                payload['migration_id'], 'destination', models.REQUESTED,
                instance_uuid=payload.get('instance_uuid'),
                dst_cloud=self.cloud_id, dst_host=host.identity.name,
                dst_fingerprint=host.fingerprint,
                dst_endpoint=payload['endpoint'], streams=streams,
                expires_at=now + self.registration_ttl,
                reason='tunnel registered at %s' % payload['endpoint'])
        except db_api.InvalidTransition:
            raise Refused('duplicate_migration', 'migration %s is already '
                          'registered' % payload['migration_id'])
        LOG.info('Migration %s: destination %s registered tunnel %s',
                 payload['migration_id'], host.identity.urn,
                 payload['endpoint'])
        return {'migration_id': payload['migration_id'],
                'state': models.REQUESTED}

    @_answer
    def forward_grant(self, ctxt, envelope_token):
        """The source cloud's broker asks this (destination) cloud."""
        payload, claims, broker = self._open(
            envelope_token, 'forward_grant', 'broker', self._stores())
        src_cloud = claims['iss']
        self._require(payload, 'migration_id', 'ticket', 'src_host',
                      'src_fingerprint')
        mid = payload['migration_id']
        try:
            ticket = tickets.verify_ticket(
                payload['ticket'], {src_cloud: self._stores()[src_cloud]},
                audience=self.cloud_id, replay_store=self.replay_store,
                now=self.clock())
        except tokens.TokenError as e:
            raise Refused(e.reason, 'ticket refused: %s' % e)
        except (trust_errors.TrustError, replay.ReplayStoreError) as e:
            raise Refused(e.reason, 'ticket refused: %s' % e)
        if ticket.issuer != src_cloud or \
                ticket.src_host != payload['src_host']:
            raise Refused('ticket_mismatch', 'ticket is for %s/%s, request '
                          'from %s/%s' % (ticket.issuer, ticket.src_host,
                                          src_cloud, payload['src_host']))
        if src_cloud != self.cloud_id:
            self._inbound_policy(src_cloud, ticket)
        record = self._registration(mid, ticket)
        streams = _granted_streams(payload.get('streams'),
                                   record['streams'])
        grant = tokens.issue_grant(
            self.credentials, migration_id=mid,
            instance_uuid=ticket.instance_uuid, src_cloud=src_cloud,
            src_host=payload['src_host'],
            src_fingerprint=payload['src_fingerprint'],
            dst_host=record['dst_host'],
            dst_fingerprint=record['dst_fingerprint'],
            dst_endpoint=record['dst_endpoint'], streams=streams,
            ttl=self.grant_ttl, now=self.clock())
        grant_claims = tokens.unverified_claims(grant)
        # Admission and the grant in one transaction: a grant refused here
        # is never returned.
        self._grant(
            mid, instance_uuid=ticket.instance_uuid, streams=streams,
            project_id=ticket.project_id,
            user_id=ticket.user_id, src_cloud=src_cloud,
            src_host=payload['src_host'],
            src_fingerprint=payload['src_fingerprint'],
            ticket_jti=ticket.jti, grant_jti=grant_claims['jti'],
            granted_at=self.clock(),
            expires_at=self.clock() + self.registration_ttl,
            reason='granted to %s (%s) by ticket %s'
                   % (broker.identity.urn, payload['src_host'], ticket.jti))
        LOG.info('Migration %s granted: %s/%s -> %s at %s', mid, src_cloud,
                 payload['src_host'], record['dst_host'],
                 record['dst_endpoint'])
        return {'grant': grant}

    def _inbound_policy(self, src_cloud, ticket):
        peer = self.peers[src_cloud]
        if '*' not in peer.allowed_projects and \
                ticket.project_id not in peer.allowed_projects:
            raise Refused('inbound_policy', 'project %s of cloud %s may not '
                          'migrate into this cloud'
                          % (ticket.project_id, src_cloud))
        if not peer.allowed_roles & set(ticket.roles):
            raise Refused('inbound_policy', 'ticket roles %s include none of'
                          ' %s accepted from cloud %s'
                          % (sorted(ticket.roles),
                             sorted(peer.allowed_roles), src_cloud))

    def _registration(self, mid, ticket):
        try:
            record = self.db.get_migration(mid, 'destination')
        except db_api.NotFound:
            raise Refused('not_registered', 'no destination tunnel is '
                          'registered for migration %s' % mid)
        if record['state'] != models.REQUESTED:
            raise Refused('bad_state', 'destination migration %s is %s'
                          % (mid, record['state']))
        if record['expires_at'] and record['expires_at'] < self.clock():
            raise Refused('not_registered', 'registration of migration %s '
                          'expired' % mid)
        if record['dst_host'] != ticket.dst_host:
            raise Refused('ticket_mismatch', 'ticket names destination %s, '
                          'registered host is %s'
                          % (ticket.dst_host, record['dst_host']))
        if record['instance_uuid'] and \
                record['instance_uuid'] != ticket.instance_uuid:
            raise Refused('ticket_mismatch', 'ticket names instance %s, the '
                          'destination registered instance %s'
                          % (ticket.instance_uuid, record['instance_uuid']))
        return record

    def _grant(self, mid, reason, **fields):
        """Admit under the project's and the peer's limits, and grant.

        Atomic across this broker's workers (db.Database.grant): with a
        limit of N, N+k simultaneous requests get exactly N grants.
        """
        project_id, src_cloud = fields['project_id'], fields['src_cloud']
        limits = [('project %s' % project_id, {'project_id': project_id},
                   self.project_max_concurrent, self.project_rate)]
        if src_cloud != self.cloud_id:
            peer = self.peers[src_cloud]
            limits.append(('cloud %s' % src_cloud, {'src_cloud': src_cloud},
                           peer.max_concurrent, peer.rate))
        try:
            self.db.grant(mid, limits, self.clock(), RATE_WINDOW, reason,
                          **fields)
        except db_api.AdmissionRefused as e:
            raise Refused(e.reason, str(e))
        except db_api.InvalidTransition as e:
            # Another request granted it first (a replayed or raced grant).
            raise Refused('bad_state', 'destination %s' % e)
        except db_api.Unsynced as e:
            raise Refused('database_unsynced', str(e))

    # -- audit -----------------------------------------------------------

    @_answer
    def record_receipt(self, ctxt, envelope_token):
        """A host reports a migration's end with the tunnel receipts.

        Hosts send one connection's receipt pair per request (envelopes
        are capped). A pair is stored only if it verifies against the grant
        this cloud recorded: two distinct hosts, each of the cloud and with
        the fingerprint the grant names for its role, the same migration,
        instance, grant and totals, the destination's receipt referencing
        the source's, and a connection the grant allowed. A migration
        reported completed becomes ``completed`` only once a verified pair
        is stored for every connection of its grant; until then (or when a
        pair was refused) it is ``incomplete``, with the reason.
        """
        payload, _claims, host = self._open(envelope_token, 'record_receipt',
                                            'host')
        self._require(payload, 'migration_id', 'status')
        mid = payload['migration_id']
        records = self.db.find_migration(mid)
        if not records:
            raise Refused('not_found', 'no migration %s' % mid)
        # The reporting host's own record: the source record for the
        # source host, the destination record for the destination host.
        record = None
        for side, key in (('source', 'src_fingerprint'),
                          ('destination', 'dst_fingerprint')):
            if side in records and records[side][key] == host.fingerprint:
                record = records[side]
                break
        if record is None:
            raise Refused('wrong_host', '%s is neither host of migration %s'
                          % (host.identity.urn, mid))
        connections = payload.get('connections') or []
        if not isinstance(connections, list) or \
                len(connections) > MAX_PAIRS_PER_REPORT:
            raise Refused('bad_request', 'connections must be a list of at '
                          'most %d receipt pair(s)' % MAX_PAIRS_PER_REPORT)
        stored, refused = 0, []
        for conn in connections:
            try:
                stored += self._store_pair(record, conn)
            except Refused as e:
                refused.append(e.args[0])
        status = payload['status']
        if status == 'completed':
            missing = self._missing_pairs(record)
            problems = list(refused)
            if missing:
                problems.append('no verified receipt pair yet for %s'
                                % ', '.join(missing))
            new_state = models.INCOMPLETE if problems else models.COMPLETED
            reason = '; '.join(problems) or 'completed: a verified receipt '\
                'pair for each of the grant\'s connections'
        else:
            new_state = (models.ABORTED if status == 'aborted'
                         else models.FAILED)
            reason = _peer_text(payload.get('reason') or status)
            if refused:
                reason += '; ' + '; '.join(refused)
        if record['state'] not in models.FINAL_STATES:
            try:
                self.db.transition(mid, record['side'], new_state,
                                   reason=reason)
            except db_api.InvalidTransition as e:
                raise Refused('bad_state', str(e))
        if refused:
            raise Refused('receipt_invalid', '; '.join(refused))
        return {'migration_id': mid, 'receipts_stored': stored,
                'state': self.db.get_migration(mid, record['side'])['state']}

    def _store_pair(self, record, conn):
        """Verify one connection's receipt pair against ``record``; store.

        :returns: how many receipts were stored (0 or 2).
        :raises Refused: when the pair does not verify.
        """
        if not isinstance(conn, dict):
            raise Refused('receipt_invalid', 'a connection must be an object')
        source, destination = (conn.get('source_receipt'),
                               conn.get('destination_receipt'))
        if not isinstance(source, str) or not isinstance(destination, str):
            raise Refused('receipt_invalid', 'a connection needs both its '
                          'source and its destination receipt')
        expected = receipts.expectation_from_records(
            {record['side']: record})
        if expected is None:
            raise Refused('receipt_invalid', 'migration %s has no grant'
                          % record['id'])
        result = receipts.verify_pair(source, destination, self._stores(),
                                      expected=expected)
        if not result.ok:
            raise Refused('receipt_invalid', 'receipt pair %s refused: %s'
                          % (result.label, '; '.join(
                              '%s: %s' % (c.name, c.detail)
                              for c in result.failed)))
        kind = result.claims.get('stream_kind')
        index = result.claims.get('connection_index')
        allowed = (record['streams'] or {}).get(kind)
        if not (isinstance(index, int) and not isinstance(index, bool)
                and isinstance(allowed, int) and 0 <= index < allowed):
            raise Refused('receipt_invalid', 'receipt pair %s is for a '
                          'connection the grant did not allow (%s)'
                          % (result.label, record['streams']))
        # Verified; the other host of a same-cloud migration may have
        # stored them already, which counts as stored.
        for role, token in (('source', source),
                            ('destination', destination)):
            signer = tokens.unverified_claims(token)['iss']
            self.db.add_receipt(record['id'], role, kind, index, signer,
                                token, tokens.token_digest(token))
        return 2

    def _missing_pairs(self, record):
        """``kind#index`` of the grant's connections without a stored pair."""
        have = {(r['stream_kind'], r['connection_index'], r['role'])
                for r in self.db.receipts(record['id'])}
        return ['%s#%d' % (kind, index)
                for kind, count in sorted((record['streams'] or {}).items())
                for index in range(count)
                if not all((kind, index, role) in have
                           for role in tokens.RECEIPT_ROLES)]

    @_answer
    def get_migration(self, ctxt, envelope_token):
        """A migration record and its receipts (hosts of this cloud)."""
        payload, _claims, _host = self._open(envelope_token,
                                             'get_migration', 'host')
        self._require(payload, 'migration_id')
        records = self.db.find_migration(payload['migration_id'])
        if not records:
            raise Refused('not_found', 'no migration %s'
                          % payload['migration_id'])
        return {'migration_id': payload['migration_id'], 'records': records,
                'receipts': self.db.receipts(payload['migration_id'])}

    @_answer
    def list_migrations(self, ctxt, envelope_token):
        """Recent migration records, optionally by project or state."""
        payload, _claims, _host = self._open(envelope_token,
                                             'list_migrations', 'host')
        limit = payload.get('limit')
        limit = DEFAULT_LIST_LIMIT if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                not 1 <= limit <= MAX_LIST_LIMIT:
            raise Refused('bad_request', 'limit must be an integer from 1 '
                          'to %d, not %s' % (MAX_LIST_LIMIT,
                                             _peer_text(limit)))
        for name in ('project_id', 'state'):
            value = payload.get(name)
            if value is not None and (not isinstance(value, str)
                                      or len(value) > 255):
                raise Refused('bad_request', '%s must be a string of at '
                              'most 255 characters' % name)
        return {'migrations': self.db.list_migrations(
            project_id=payload.get('project_id'),
            state=payload.get('state'), limit=limit)}


def _granted_streams(requested, registered):
    """The connections both sides agreed to: the smaller of each."""
    registered = registered or {'memory': 1}
    requested = requested if isinstance(requested, dict) else registered
    streams = {}
    for kind, count in registered.items():
        asked = requested.get(kind)
        if isinstance(asked, int) and not isinstance(asked, bool) \
                and asked > 0:
            streams[kind] = min(asked, count)
    if not streams:
        raise Refused('stream_not_allowed', 'requested streams %s, '
                      'registered %s' % (requested, registered))
    return streams


def new_migration_id():
    return str(uuid.uuid4())
