"""Lets nova load ``compute_driver = secmig.SecureLibvirtDriver``.

nova imports compute drivers only from the ``nova.virt`` namespace; the
driver itself lives in :mod:`secmig_nova.virt.driver`. This package ships
on its own: there is no ``nova/__init__.py`` or ``nova/virt/__init__.py``
here, so nova's own packages are never shadowed.
"""

from secmig_nova.virt import driver

SecureLibvirtDriver = driver.SecureLibvirtDriver

__all__ = ['SecureLibvirtDriver']
