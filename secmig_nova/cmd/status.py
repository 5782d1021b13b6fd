"""``secmig-nova-manage status``: is this host ready for secure migration?

Upgrade-check style (like ``nova-status upgrade check``): every check
prints Success, Warning or Failure with what to do, and the exit status is
the worst result: 0 success, 1 warning, 2 failure.

Checks: the ``[secmig]`` identity and trust files load and this host's
certificate verifies against its own CA (and CRL); the private key is
accessible to its owner only (a failure otherwise, as the tunnel refuses
it); certificates and the CRL are not expired or about to
expire; nova's ``[libvirt]`` is not set to tunnelled or native-TLS
migration (never stacked with secmig); the broker answers on the message
bus; libvirt is new enough for UNIX-socket migration (6.8.0).
"""

import configparser
import datetime
import os
import stat

SUCCESS, WARNING, FAILURE = 0, 1, 2
NAMES = {SUCCESS: 'Success', WARNING: 'Warning', FAILURE: 'Failure'}
EXPIRY_WARNING_DAYS = 30
CRL_WARNING_DAYS = 7
LIBVIRT_UNIX_MIGRATION = 6008000


class Result:
    def __init__(self, code, details=''):
        self.code = code
        self.details = details


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def check_identity(conf):
    from secmig_nova.trust import certs
    from secmig_nova.trust import errors as trust_errors
    from secmig_nova.trust import store
    s = conf.secmig
    try:
        creds = certs.Credentials.load(s.cert_file, s.key_file)
        trust = store.TrustStore.load(s.cloud_id, s.ca_file, s.crl_file)
        peer = trust.verify(creds.chain, 'client', role='host')
    except (trust_errors.TrustError, OSError) as e:
        return Result(FAILURE, 'this host\'s identity is unusable: %s. Fix '
                      '[secmig] cert_file/key_file/ca_file/crl_file (issue '
                      'with secmig-nova-manage ca issue host).' % e)
    mode = stat.S_IMODE(os.stat(s.key_file).st_mode)
    if mode & 0o077:
        # The tunnel refuses such a key (key_file_insecure): every secure
        # migration of this host would fail, so this is not a warning.
        return Result(FAILURE, '%s is accessible to others (mode %04o): '
                      'secmig-tunnel refuses it (key_file_insecure), so '
                      'every secure migration of this host fails. chmod '
                      '600 it.' % (s.key_file, mode))
    return Result(SUCCESS, '%s, fingerprint %s' % (peer.identity.urn,
                                                   peer.fingerprint))


def check_expiry(conf):
    from secmig_nova.trust import certs
    s = conf.secmig
    worst, notes = SUCCESS, []
    now = _now()
    for label, path in (('host certificate', s.cert_file),
                        ('CA', s.ca_file)):
        try:
            chain = certs.load_pem_chain(path)
        except Exception as e:  # noqa: reported, not raised
            return Result(FAILURE, 'cannot read %s %s: %s'
                          % (label, path, e))
        for cert in chain:
            left = cert.not_valid_after_utc - now
            if left.total_seconds() < 0:
                worst = FAILURE
                notes.append('%s %s expired on %s' % (
                    label, cert.subject.rfc4514_string(),
                    cert.not_valid_after_utc.date()))
            elif left.days < EXPIRY_WARNING_DAYS:
                worst = max(worst, WARNING)
                notes.append('%s %s expires in %d days: renew it' % (
                    label, cert.subject.rfc4514_string(), left.days))
    if s.crl_file:
        crl = certs.load_crl(s.crl_file)
        left = crl.next_update_utc - now if crl.next_update_utc else None
        if left is not None and left.total_seconds() < 0:
            worst = FAILURE
            notes.append('CRL %s expired: every peer is refused until it '
                         'is re-issued (secmig-nova-manage ca crl)'
                         % s.crl_file)
        elif left is not None and left.days < CRL_WARNING_DAYS:
            worst = max(worst, WARNING)
            notes.append('CRL %s expires in %d days' % (s.crl_file,
                                                        left.days))
    return Result(worst, '; '.join(notes) or 'no certificate or CRL '
                  'expires within %d days' % EXPIRY_WARNING_DAYS)


def check_libvirt_settings(config_files):
    """[libvirt] tunnelled / native TLS must not be set with secmig."""
    cp = configparser.RawConfigParser(strict=False)
    cp.read(config_files)
    problems = []
    for option, what in (('live_migration_tunnelled', 'tunnelled'),
                         ('live_migration_with_native_tls', 'native TLS')):
        if cp.has_option('libvirt', option) and \
                cp.get('libvirt', option).strip().lower() in ('true', '1',
                                                              'yes', 'on'):
            problems.append('[libvirt] %s = True: %s migration and secmig '
                            'are alternatives, set it to False' % (option,
                                                                   what))
    if problems:
        return Result(FAILURE, '; '.join(problems))
    return Result(SUCCESS, 'neither tunnelled nor native-TLS migration is '
                  'enabled')


def check_broker(conf, timeout):
    import oslo_messaging as messaging

    from secmig_nova.broker import rpcapi
    if not conf.transport_url:
        return Result(WARNING, '[DEFAULT] transport_url is not set: the '
                      'broker cannot be reached')
    transport = messaging.get_rpc_transport(conf)
    try:
        api = rpcapi.BrokerAPI(transport, topic=conf.secmig_broker.topic,
                               timeout=timeout)
        # A garbage envelope: any answer proves a broker is listening.
        answer = api.get_migration('status-probe')
    except messaging.MessagingTimeout:
        return Result(FAILURE, 'no broker answered on topic %s within %s s:'
                      ' start secmig-broker or fix transport_url'
                      % (conf.secmig_broker.topic, timeout))
    except messaging.MessagingException as e:
        return Result(FAILURE, 'message bus unreachable: %s' % e)
    finally:
        transport.cleanup()
    return Result(SUCCESS, 'broker answered (%s)' % answer.get('error',
                                                               'ok'))


def check_libvirt_version(uri):
    try:
        import libvirt
    except ImportError:
        return Result(WARNING, 'libvirt-python is not installed here')
    try:
        conn = libvirt.openReadOnly(uri)
        try:
            version = conn.getLibVersion()
        finally:
            conn.close()
    except libvirt.libvirtError as e:
        return Result(WARNING, 'cannot ask libvirtd at %s: %s' % (uri, e))
    pretty = '%d.%d.%d' % (version // 1000000, version // 1000 % 1000,
                           version % 1000)
    if version < LIBVIRT_UNIX_MIGRATION:
        return Result(FAILURE, 'libvirt %s cannot migrate over UNIX sockets'
                      ' (needs 6.8.0)' % pretty)
    return Result(SUCCESS, 'libvirt %s supports UNIX-socket migration'
                  % pretty)


def run(args):
    """Entry point of ``secmig-nova-manage status``."""
    from oslo_messaging import opts as messaging_opts

    import secmig_nova.conf
    conf = secmig_nova.conf.CONF
    # transport_url and the rabbit options, as the broker reads them.
    for group, opts in messaging_opts.list_opts():
        conf.register_opts(opts, group=group)
    conf([], project='secmig-nova', default_config_files=args.config_file)
    checks = [('Identity and trust', lambda: check_identity(conf)),
              ('Certificate and CRL expiry', lambda: check_expiry(conf)),
              ('libvirt migration settings',
               lambda: check_libvirt_settings(args.config_file))]
    if not args.skip_broker:
        checks.append(('Broker reachability',
                       lambda: check_broker(conf, args.timeout)))
    if args.libvirt_uri:
        checks.append(('libvirt version',
                       lambda: check_libvirt_version(args.libvirt_uri)))
    worst = SUCCESS
    for title, check in checks:
        try:
            result = check()
        except Exception as e:  # noqa: a check that breaks is a failure
            result = Result(FAILURE, 'check failed: %r' % e)
        worst = max(worst, result.code)
        print('Check: %s\n  Result: %s\n  Details: %s\n'
              % (title, NAMES[result.code], result.details))
    return worst
