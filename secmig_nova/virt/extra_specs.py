"""Flavor extra spec validator for ``secmig:enforcement`` (nova-api).

nova-api loads validators from the ``nova.api.extra_spec_validators``
entry point; with this one registered, ``openstack flavor set --property
secmig:enforcement=requried`` is refused at the API (microversion 2.86+)
instead of failing later, at live-migration time.
"""

from nova.api.validation.extra_specs import base

from secmig_nova.virt import enforcement

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=enforcement.KEY,
        description=(
            'secmig enforcement of live migrations of this flavor\'s '
            'servers; replaces the compute hosts\' [secmig] enforcement.'),
        value={
            'type': str,
            'description': 'required, preferred or disabled',
            'enum': list(enforcement.MODES),
        },
    ),
]


def register():
    return EXTRA_SPEC_VALIDATORS
