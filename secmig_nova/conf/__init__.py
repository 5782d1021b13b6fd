"""Configuration options of secmig-nova, one module per option group."""

from oslo_config import cfg

from secmig_nova.conf import secmig

CONF = cfg.CONF

secmig.register_opts(CONF)
