"""``secmig-nova-manage``: operator commands.

    secmig-nova-manage ca init   --dir DIR --cloud-id ID [--days N] [--force]
    secmig-nova-manage ca issue  host|broker NAME --dir DIR [--out DIR]
                                 [--days N] [--dns NAME ...]
    secmig-nova-manage ca revoke CERT --dir DIR
    secmig-nova-manage ca crl    --dir DIR [--days N]
    secmig-nova-manage ca show   CERT [--ca-file CA --cloud-id ID]
    secmig-nova-manage db sync   [--config-file F ...] [--connection URL]
    secmig-nova-manage db version [--config-file F ...] [--connection URL]
    secmig-nova-manage receipts verify FILE|MIGRATION-ID
                                 --ca CLOUD=CA.pem [--ca ...] [--crl ...]
                                 [--grant GRANT-FILE]
                                 [--config-file F ...] [--connection URL]
    secmig-nova-manage receipts list|show [MIGRATION-ID] [--config-file F]
    secmig-nova-manage status --config-file /etc/nova/nova-cpu.conf ...
                                 [--libvirt-uri URI] [--skip-broker]

The ``ca`` commands run a small cloud CA in a directory, for labs, tests and
devstack: ECDSA P-256 keys written with mode 0600, certificates with the
``urn:secmig:<cloud-id>:<role>:<name>`` subjectAltName. Exit status 0 on
success, 1 on a refused or failed command, 2 on usage errors.
"""

import argparse
import sys

import sqlalchemy.exc

from secmig_nova.trust import ca
from secmig_nova.trust import certs
from secmig_nova.trust import errors as trust_errors
from secmig_nova.trust import store


def _ca_init(args):
    directory = ca.CADirectory(args.dir)
    cert = directory.init(args.cloud_id, days=args.days, force=args.force)
    print('created CA of cloud %s in %s' % (args.cloud_id, args.dir))
    print('  certificate: %s' % directory.ca_file)
    print('  CRL:         %s' % directory.crl_file)
    print('  fingerprint: %s' % certs.fingerprint(cert))
    print('  valid until: %s' % cert.not_valid_after_utc.isoformat())
    return 0


def _ca_issue(args):
    directory = ca.CADirectory(args.dir)
    cert_file, key_file = directory.issue(
        args.role, args.name, out_dir=args.out, days=args.days,
        dns_names=args.dns or None)
    cert = certs.load_pem_chain(cert_file)[0]
    print('issued %s certificate %s' % (args.role,
                                        certs.identity_of(cert).urn))
    print('  certificate: %s' % cert_file)
    print('  key (0600):  %s' % key_file)
    print('  fingerprint: %s' % certs.fingerprint(cert))
    print('  valid until: %s' % cert.not_valid_after_utc.isoformat())
    return 0


def _ca_revoke(args):
    directory = ca.CADirectory(args.dir)
    serial = directory.revoke(args.cert)
    print('revoked serial %x; CRL rewritten: %s'
          % (serial, directory.crl_file))
    return 0


def _ca_crl(args):
    directory = ca.CADirectory(args.dir)
    print('CRL written: %s' % directory.write_crl(days=args.days))
    return 0


def _ca_show(args):
    chain = certs.load_pem_chain(args.cert)
    leaf = chain[0]
    identity = certs.identity_of(leaf)
    print('identity:    %s' % identity.urn)
    print('fingerprint: %s' % certs.fingerprint(leaf))
    print('valid:       %s .. %s' % (leaf.not_valid_before_utc.isoformat(),
                                     leaf.not_valid_after_utc.isoformat()))
    if args.ca_file:
        trust = store.TrustStore.load(args.cloud_id or identity.cloud_id,
                                      args.ca_file, args.crl_file)
        trust.verify(chain, 'client', role=identity.role)
        print('verified:    chains to %s for cloud %s'
              % (args.ca_file, trust.cloud_id))
    return 0


def _db_url(args):
    if args.connection:
        return args.connection
    import secmig_nova.conf
    conf = secmig_nova.conf.CONF
    conf([], project='secmig-nova', default_config_files=args.config_file)
    return conf.secmig_broker.database_connection


def _db_sync(args):
    from secmig_nova.broker.db import migration
    url = _db_url(args)
    migration.sync(url)
    print('broker database at revision %s' % migration.version(url))
    return 0


def _db_version(args):
    from secmig_nova.broker.db import migration
    print(migration.version(_db_url(args)) or 'empty (run db sync)')
    return 0


def _stores(args):
    crls = dict(_pair(v) for v in args.crl or ())
    stores = {}
    for value in args.ca or ():
        cloud, path = _pair(value)
        stores[cloud] = store.TrustStore.load(cloud, path, crls.get(cloud))
    if not stores:
        raise ValueError('give the CA bundle of each cloud: --ca '
                         'CLOUD=PATH (repeatable)')
    return stores


def _pair(value):
    cloud, sep, path = value.partition('=')
    if not sep or not cloud or not path:
        raise ValueError('expected CLOUD=PATH, got %r' % value)
    return cloud, path


def _broker_db(args):
    from secmig_nova.broker.db import api
    return api.Database(_db_url(args))


def _receipts_verify(args):
    import os
    from secmig_nova.tunnel import receipts
    stores = _stores(args)
    records = None
    if os.path.exists(args.source):
        doc = _read_json(args.source)
        pairs = receipts.pairs_from_document(doc)
        if isinstance(doc, dict) and 'records' in doc:
            records = doc['records']  # receipts show's output
    else:
        db = _broker_db(args)
        try:
            rows = db.receipts(args.source)
            records = db.find_migration(args.source)
        finally:
            db.dispose()
        if not rows:
            print('no receipts recorded for migration %s' % args.source,
                  file=sys.stderr)
            return 1
        pairs = receipts.pairs_from_document({'receipts': rows})
    if not pairs:
        print('no receipt pairs in %s' % args.source, file=sys.stderr)
        return 1
    expected = receipts.expectation_from_records(records)
    if args.grant:
        expected = _grant_expectation(args.grant, stores, expected)
    if expected is None:
        print('note: no grant given (--grant) or recorded: the receipts '
              'are checked against each other, not against a grant')
    failed = 0
    for source, destination in pairs:
        result = receipts.verify_pair(source, destination, stores,
                                      expected=expected)
        print('%s: %s' % (result.label, 'OK' if result.ok else 'FAILED'))
        for check in result.checks:
            print('  [%s] %s: %s' % ('ok' if check.ok else 'FAILED',
                                     check.name, check.detail))
        if result.ok:
            print('  %s' % receipts.totals_text(result.claims))
        failed += not result.ok
    return 1 if failed else 0


# Receipt files hold a few receipts per connection (about 2 KB each).
MAX_RECEIPTS_FILE_BYTES = 16 * 1024 * 1024


def _read_json(path):
    """A JSON document from an untrusted file; ValueError if it is not."""
    import json
    with open(path, 'rb') as f:
        data = f.read(MAX_RECEIPTS_FILE_BYTES + 1)
    if len(data) > MAX_RECEIPTS_FILE_BYTES:
        raise ValueError('%s is larger than %d bytes'
                         % (path, MAX_RECEIPTS_FILE_BYTES))
    try:
        return json.loads(data.decode('utf-8'))
    except RecursionError:
        raise ValueError('%s nests JSON too deeply' % path)
    except ValueError as e:
        raise ValueError('%s is not JSON: %s' % (path, e))


def _grant_expectation(path, stores, recorded):
    """The claims a grant (compact JWS in ``path``) binds, verified."""
    from secmig_nova.authz import tokens
    from secmig_nova.tunnel import errors
    from secmig_nova.tunnel import receipts
    with open(path, 'rb') as f:
        token = f.read(tokens.MAX_TOKEN_BYTES + 2).decode('ascii').strip()
    try:
        claims = tokens.unverified_claims(token)
        store = stores.get(claims.get('dst_cloud'))
        if store is None:
            raise ValueError('no CA bundle for the grant\'s destination '
                             'cloud %s' % errors.peer_text(
                                 claims.get('dst_cloud')))
        # Grants live minutes; check the broker's chain as it was then.
        iat = claims.get('iat')
        grant = tokens.verify_grant(token, store,
                                    now=iat if tokens.is_time(iat) else None)
    except tokens.TokenError as e:
        raise ValueError('grant refused: %s' % errors.peer_text(e))
    expected = receipts.expectation_from_grant(grant)
    if recorded is not None and recorded != expected:
        raise ValueError('grant %s is not the grant the broker recorded '
                         '(%s)' % (grant.jti, errors.peer_text(
                             recorded.get('grant_jti'))))
    return expected


def _receipts_list(args):
    db = _broker_db(args)
    try:
        for record in db.list_migrations(limit=args.limit):
            print('%s  %-11s %-11s %s -> %s  %s' % (
                record['id'], record['side'], record['state'],
                record['src_host'] or '?', record['dst_host'] or '?',
                record['reason'] or ''))
    finally:
        db.dispose()
    return 0


def _receipts_show(args):
    import json
    db = _broker_db(args)
    try:
        records = db.find_migration(args.migration_id)
        rows = db.receipts(args.migration_id)
    finally:
        db.dispose()
    if not records:
        print('no migration %s' % args.migration_id, file=sys.stderr)
        return 1
    print(json.dumps({'records': records, 'receipts': rows}, indent=2,
                     sort_keys=True, default=str))
    return 0


def _status(args):
    from secmig_nova.cmd import status
    return status.run(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='secmig-nova-manage',
        description='secmig-nova operator commands')
    sub = parser.add_subparsers(dest='command', required=True)

    ca_parser = sub.add_parser('ca', help='a cloud CA for labs and devstack')
    ca_sub = ca_parser.add_subparsers(dest='ca_command', required=True)

    p = ca_sub.add_parser('init', help='create a cloud CA')
    p.add_argument('--dir', required=True, help='CA directory')
    p.add_argument('--cloud-id', required=True)
    p.add_argument('--days', type=int, default=ca.DEFAULT_CA_DAYS)
    p.add_argument('--force', action='store_true',
                   help='replace an existing CA (invalidates its certs)')
    p.set_defaults(func=_ca_init)

    p = ca_sub.add_parser('issue', help='issue a host or broker certificate')
    p.add_argument('role', choices=certs.ROLES)
    p.add_argument('name', help='host name (or broker name)')
    p.add_argument('--dir', required=True, help='CA directory')
    p.add_argument('--out', help='where to write NAME.crt and NAME.key '
                   '(default: the CA directory)')
    p.add_argument('--days', type=int, default=ca.DEFAULT_CERT_DAYS)
    p.add_argument('--dns', action='append',
                   help='DNS subjectAltName (default: NAME); repeatable')
    p.set_defaults(func=_ca_issue)

    p = ca_sub.add_parser('revoke', help='revoke a certificate')
    p.add_argument('cert')
    p.add_argument('--dir', required=True, help='CA directory')
    p.set_defaults(func=_ca_revoke)

    p = ca_sub.add_parser('crl', help='re-issue the CRL (before it expires)')
    p.add_argument('--dir', required=True, help='CA directory')
    p.add_argument('--days', type=int, default=ca.DEFAULT_CRL_DAYS)
    p.set_defaults(func=_ca_crl)

    p = ca_sub.add_parser('show', help='print and optionally verify a '
                          'certificate')
    p.add_argument('cert')
    p.add_argument('--ca-file')
    p.add_argument('--crl-file')
    p.add_argument('--cloud-id')
    p.set_defaults(func=_ca_show)

    db_parser = sub.add_parser('db', help='the broker database')
    db_sub = db_parser.add_subparsers(dest='db_command', required=True)
    for name, func, text in (
            ('sync', _db_sync, 'create or upgrade the broker database'),
            ('version', _db_version, 'print the schema revision')):
        p = db_sub.add_parser(name, help=text)
        p.add_argument('--config-file', action='append', default=[],
                       help='configuration with [secmig_broker] '
                            'database_connection')
        p.add_argument('--connection', help='SQLAlchemy URL (overrides '
                       'the configuration)')
        p.set_defaults(func=func)

    r_parser = sub.add_parser('receipts', help='signed migration receipts')
    r_sub = r_parser.add_subparsers(dest='receipts_command', required=True)
    p = r_sub.add_parser('verify', help='verify receipts offline')
    p.add_argument('source', help='a JSON file (tunnel outcome, broker '
                   'record, list of pairs) or a migration id in the '
                   'broker database')
    p.add_argument('--ca', action='append',
                   help='CLOUD=CA bundle of a cloud (repeatable)')
    p.add_argument('--crl', action='append', help='CLOUD=CRL (optional)')
    p.add_argument('--grant', help='file with the migration\'s grant (a '
                   'compact JWS): both receipts must be bound to it')
    p.set_defaults(func=_receipts_verify)
    p = r_sub.add_parser('list', help='recent migrations in the broker '
                         'database')
    p.add_argument('--limit', type=int, default=50)
    p.set_defaults(func=_receipts_list)
    p = r_sub.add_parser('show', help='a migration\'s records and receipts')
    p.add_argument('migration_id')
    p.set_defaults(func=_receipts_show)
    p = sub.add_parser('status', help='is this host ready for secure '
                       'migration (exit 0 ok, 1 warning, 2 failure)')
    p.add_argument('--config-file', action='append', default=[],
                   help='nova.conf / nova-cpu.conf with [secmig] '
                        '(repeatable)')
    p.add_argument('--libvirt-uri', default=None,
                   help='check this libvirtd\'s version '
                        '(e.g. qemu:///system)')
    p.add_argument('--skip-broker', action='store_true',
                   help='do not try to reach the broker')
    p.add_argument('--timeout', type=float, default=5.0,
                   help='seconds to wait for the broker')
    p.set_defaults(func=_status)
    for p in r_sub.choices.values():
        p.add_argument('--config-file', action='append', default=[],
                       help='configuration with [secmig_broker] '
                            'database_connection')
        p.add_argument('--connection', help='SQLAlchemy URL of the broker '
                       'database')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (trust_errors.TrustError, FileExistsError, OSError,
            ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
        print('secmig-nova-manage: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
