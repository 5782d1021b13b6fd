"""``secmig-broker``: one cloud's migration broker (an RPC service).

    secmig-broker --config-file /etc/secmig/broker.conf

Configuration: ``[DEFAULT] transport_url`` (this cloud's message bus),
``[secmig]`` (cloud id, CA), ``[secmig_broker]`` (certificate, database,
peers, limits), ``[secmig_keystone]`` (Keystone access) and one
``[secmig_peer_<cloud-id>]`` per peer. The database must exist
(``secmig-nova-manage db sync``).
"""

import sys


def main(argv=None):
    from oslo_service import backend
    backend.init_backend(backend.BackendType.THREADING)

    from oslo_config import cfg
    from oslo_log import log as logging
    from oslo_service import service

    from secmig_nova.broker import service as broker_service
    import secmig_nova.conf
    from secmig_nova.trust import errors as trust_errors

    conf = secmig_nova.conf.CONF
    logging.register_options(conf)
    conf(sys.argv[1:] if argv is None else argv, project='secmig-nova',
         prog='secmig-broker')
    logging.setup(conf, 'secmig-broker')
    log = logging.getLogger('secmig_nova.cmd.broker')
    try:
        # Fail at start-up, in the foreground, on a bad configuration
        # (certificates, trust stores, peers) rather than in a worker.
        broker_service.build_manager(conf).db.dispose()
    except (ValueError, OSError, cfg.Error, trust_errors.TrustError) as e:
        log.error('secmig-broker cannot start: %s', e)
        return 1
    svc = broker_service.BrokerService(conf)
    workers = conf.secmig_broker.workers
    if workers == 1:
        launcher = service.ServiceLauncher(conf)
        launcher.launch_service(svc)
    else:
        launcher = service.launch(conf, svc, workers=workers,
                                  restart_method='mutate')
    launcher.wait()
    return 0


if __name__ == '__main__':
    sys.exit(main())
