"""Tests of secmig_nova/virt/enforcement.py: modes, overrides, decisions."""

import testtools

from secmig_nova.conf import secmig as secmig_conf
from secmig_nova.virt import enforcement as enf


class TestModes(testtools.TestCase):

    def test_modes_are_the_option_choices(self):
        self.assertEqual(set(secmig_conf.ENFORCEMENT_MODES), set(enf.MODES))
        self.assertLess(enf.rank(enf.DISABLED), enf.rank(enf.PREFERRED))
        self.assertLess(enf.rank(enf.PREFERRED), enf.rank(enf.REQUIRED))

    def test_parse(self):
        self.assertIsNone(enf.parse(None, 'flavor f'))
        self.assertIsNone(enf.parse('', 'flavor f'))
        self.assertEqual('required', enf.parse(' Required ', 'flavor f'))
        e = self.assertRaises(enf.InvalidMode, enf.parse, 'requried',
                              'image i')
        self.assertIn('image i secmig:enforcement=', str(e))

    def test_flavor_replaces_the_host_mode(self):
        self.assertEqual('disabled', enf.wanted('required', 'disabled'))
        self.assertEqual('required', enf.wanted('preferred', 'required'))
        self.assertEqual('preferred', enf.wanted('preferred'))

    def test_image_only_raises_the_mode(self):
        self.assertEqual('required', enf.wanted('preferred', None,
                                                'required'))
        self.assertEqual('required', enf.wanted('required', None,
                                                'disabled'))
        self.assertEqual('preferred', enf.wanted('required', 'disabled',
                                                 'preferred'))
        self.assertEqual('required', enf.wanted('disabled', None,
                                                'required'))


class TestDecide(testtools.TestCase):

    def test_both_offer(self):
        for mode in (enf.PREFERRED, enf.REQUIRED):
            d = enf.decide(mode, True, True)
            self.assertTrue(d.secure)
            self.assertFalse(d.refused)

    def test_disabled_is_plain(self):
        d = enf.decide(enf.DISABLED, True, True)
        self.assertFalse(d.secure)
        self.assertFalse(d.refused)

    def test_preferred_falls_back(self):
        for src, dst in ((True, False), (False, True), (True, None)):
            d = enf.decide(enf.PREFERRED, src, dst, source='a',
                           destination='b')
            self.assertFalse(d.secure)
            self.assertFalse(d.refused)
            self.assertEqual(('a',) if not src else ('b',), d.lacking)

    def test_secure_and_disabled_lack_nothing(self):
        self.assertEqual((), enf.decide(enf.PREFERRED, True, True).lacking)
        self.assertEqual((), enf.decide(enf.DISABLED, False, False).lacking)

    def test_required_refuses_and_names_the_host(self):
        d = enf.decide(enf.REQUIRED, True, False, source='a', destination='b')
        self.assertTrue(d.refused)
        self.assertFalse(d.secure)
        self.assertIn('but b does not offer', d.refusal)
        self.assertIn('compute_driver = secmig.SecureLibvirtDriver',
                      d.refusal)
        d = enf.decide(enf.REQUIRED, False, None, source='a', destination='b')
        self.assertIn('but a and b do not offer', d.refusal)


class TestExtraSpecValidator(testtools.TestCase):
    """nova-api's validation with secmig's validator registered."""

    def test_values(self):
        from nova.api.validation.extra_specs import validators
        from nova import exception

        from secmig_nova.virt import extra_specs

        [validator] = extra_specs.register()
        self.addCleanup(validators.VALIDATORS.pop, validator.name, None)
        validators.VALIDATORS[validator.name] = validator
        for mode in enf.MODES:
            validators.validate('secmig:enforcement', mode)
        self.assertRaises(exception.ValidationError, validators.validate,
                          'secmig:enforcement', 'requried')
