"""Collects every option group for oslo-config-generator."""

import collections
import importlib

_MODULES = (
    'secmig',
    'keystone',
    'broker',
)


def _modules():
    return [importlib.import_module('secmig_nova.conf.' + name)
            for name in _MODULES]


def list_opts():
    opts = collections.defaultdict(list)
    for module in _modules():
        for group, group_opts in module.list_opts().items():
            opts[group].extend(group_opts)
    return [(group, group_opts) for group, group_opts in opts.items()]
