"""Tests of the package's layout and conventions.

Only secmig_nova/virt/ (the thin driver layer) may import nova, so
everything else stays usable and testable without it; every module says
what it is for; every option is documented; and the entry points that
setup.cfg declares exist.
"""

import ast
import configparser
import importlib
import os

from oslo_config import cfg
import testtools

from secmig_nova.conf import opts as conf_opts

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PACKAGE = os.path.join(REPO, 'secmig_nova')
NOVA_ALLOWED = os.path.join(PACKAGE, 'virt')


def modules():
    """(relative path, parsed module) of every .py file of the package."""
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != '__pycache__')
        for name in sorted(filenames):
            if name.endswith('.py'):
                path = os.path.join(dirpath, name)
                with open(path, encoding='utf-8') as f:
                    source = f.read()
                yield path, source, ast.parse(source, filename=path)


def imported_modules(tree):
    """Absolute names of the modules a module imports (any scope)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            for alias in node.names:
                yield '%s.%s' % (node.module, alias.name)


# Groups whose consumers load a module and call one of its functions
# (nova: ``ext.plugin.register()``), with the function they call.
MODULE_ENTRY_POINTS = {'nova.api.extra_spec_validators': 'register'}


def is_nova(name):
    return name == 'nova' or name.startswith('nova.')


def entry_points():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, 'setup.cfg'))
    result = {}
    for group, value in parser.items('entry_points'):
        result[group] = dict(
            (part.strip() for part in line.split('=', 1))
            for line in value.splitlines() if line.strip())
    return result


class LayoutTest(testtools.TestCase):

    def test_package_found(self):
        found = [os.path.relpath(p, REPO) for p, _s, _t in modules()]
        self.assertIn(os.path.join('secmig_nova', 'tunnel', 'tls.py'), found)
        self.assertIn(os.path.join('secmig_nova', 'virt', '__init__.py'),
                      found)

    def test_is_nova(self):
        self.assertTrue(is_nova('nova'))
        self.assertTrue(is_nova('nova.virt.driver'))
        self.assertFalse(is_nova('secmig_nova'))
        self.assertFalse(is_nova('secmig_nova.virt'))
        self.assertFalse(is_nova('novaclient'))
        tree = ast.parse('import nova.conf\n'
                         'def f():\n'
                         '    from nova.virt import driver\n'
                         'from secmig_nova import conf\n'
                         'from . import nova\n')
        self.assertEqual(['nova.conf', 'nova.virt', 'nova.virt.driver'],
                         sorted(n for n in imported_modules(tree)
                                if is_nova(n)))

    def test_only_virt_imports_nova(self):
        offenders = []
        for path, _source, tree in modules():
            if path.startswith(NOVA_ALLOWED + os.sep):
                continue
            offenders += ['%s imports %s' % (os.path.relpath(path, REPO), n)
                          for n in imported_modules(tree) if is_nova(n)]
        self.assertEqual([], offenders)

    def test_module_docstrings(self):
        # Empty package markers (__init__.py with nothing in them) are the
        # only modules allowed without a docstring.
        missing = []
        for path, source, tree in modules():
            if not source.strip() and os.path.basename(path) == \
                    '__init__.py':
                continue
            doc = ast.get_docstring(tree)
            if not doc or not doc.strip():
                missing.append(os.path.relpath(path, REPO))
        self.assertEqual([], missing)

    def test_options_have_help(self):
        groups = conf_opts.list_opts()
        self.assertIn('secmig', [getattr(g, 'name', g) for g, _o in groups])
        undocumented = []
        for group, opts in groups:
            self.assertTrue(opts)
            for opt in opts:
                self.assertIsInstance(opt, cfg.Opt)
                if not (opt.help or '').strip():
                    undocumented.append('[%s] %s' % (
                        getattr(group, 'name', group), opt.name))
        self.assertEqual([], undocumented)

    def test_declared_entry_points(self):
        eps = entry_points()
        scripts = eps.get('console_scripts', {})
        self.assertEqual('secmig_nova.cmd.tunnel:main',
                         scripts.get('secmig-tunnel'))
        self.assertEqual('secmig_nova.cmd.manage:main',
                         scripts.get('secmig-nova-manage'))
        self.assertEqual('secmig_nova.conf.opts:list_opts',
                         eps.get('oslo.config.opts', {}).get('secmig_nova'))

    def test_entry_point_targets_exist(self):
        missing = []
        for group, points in sorted(entry_points().items()):
            for name, target in sorted(points.items()):
                module_name, _sep, attr = target.partition(':')
                if not attr and group in MODULE_ENTRY_POINTS:
                    attr = MODULE_ENTRY_POINTS[group]
                try:
                    obj = importlib.import_module(module_name)
                    for part in attr.split('.') if attr else ():
                        obj = getattr(obj, part)
                except (ImportError, AttributeError) as e:
                    missing.append('%s %s = %s: %s'
                                   % (group, name, target, e))
                    continue
                if not callable(obj):
                    missing.append('%s %s = %s: not callable'
                                   % (group, name, target))
        self.assertEqual([], missing)

    def test_extra_spec_validators_name_a_module(self):
        # nova calls register() on the loaded entry point itself.
        self.assertEqual(
            {'secmig': 'secmig_nova.virt.extra_specs'},
            entry_points().get('nova.api.extra_spec_validators'))
