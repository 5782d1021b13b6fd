"""Configuration options of secmig-nova, one module per option group."""

from oslo_config import cfg

from secmig_nova.conf import broker
from secmig_nova.conf import keystone
from secmig_nova.conf import secmig

CONF = cfg.CONF

secmig.register_opts(CONF)
keystone.register_opts(CONF)
broker.register_opts(CONF)
