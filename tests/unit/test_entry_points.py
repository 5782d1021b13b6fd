"""The entry points as installed, loaded the way their consumers load them.

test_layout reads setup.cfg; these tests go through the installed package's
metadata (importlib.metadata, and stevedore for nova's loader), so a stale
install, one not refreshed with ``pip install -e .`` after setup.cfg
changed, fails here instead of silently in nova-api.
"""

from importlib import metadata
from unittest import mock

import testtools

from secmig_nova.virt import enforcement

VALIDATORS_GROUP = 'nova.api.extra_spec_validators'


def installed_entry_point(group, name):
    found = [ep for ep in metadata.entry_points(group=group)
             if ep.name == name]
    if len(found) != 1:
        raise AssertionError(
            '%d entry points %s in %s; is the package installed '
            '(pip install -e .)?' % (len(found), name, group))
    return found[0]


class TestExtraSpecValidatorEntryPoint(testtools.TestCase):

    def test_entry_point_returns_the_enforcement_validator(self):
        # nova calls register() on what the entry point names, so it
        # names the module, not the function.
        ep = installed_entry_point(VALIDATORS_GROUP, 'secmig')
        self.assertEqual('secmig_nova.virt.extra_specs', ep.value)
        validators = {v.name: v for v in ep.load().register()}
        self.assertEqual(['secmig:enforcement'], list(validators))
        self.assertEqual(sorted(enforcement.MODES),
                         sorted(validators['secmig:enforcement'].value[
                             'enum']))

    def test_nova_loader_validates_the_extra_spec(self):
        from nova.api.validation.extra_specs import validators
        from nova import exception

        # A fresh registry, filled by nova's own stevedore loader: other
        # tests add and remove entries of the module-level one.
        self._patch(validators, 'VALIDATORS', {})
        self._patch(validators, 'NAMESPACES', set())
        validators.load_validators()
        self.assertIn('secmig:enforcement', validators.VALIDATORS)
        self.assertIn('secmig', validators.NAMESPACES)
        self.assertIn('hw:cpu_policy', validators.VALIDATORS)  # nova's own

        for mode in enforcement.MODES:
            validators.validate('secmig:enforcement', mode)
        e = self.assertRaises(exception.ValidationError,
                              validators.validate, 'secmig:enforcement',
                              'requried')
        self.assertIn('requried', str(e))
        # The secmig namespace is nova's to police now: a misspelt key is
        # refused rather than ignored.
        self.assertRaises(exception.ValidationError, validators.validate,
                          'secmig:enforcment', 'required')

    def _patch(self, obj, name, value):
        patcher = mock.patch.object(obj, name, value)
        patcher.start()
        self.addCleanup(patcher.stop)
