"""Sphinx configuration of the secmig-nova documentation."""

extensions = []
source_suffix = '.rst'
master_doc = 'index'
project = 'secmig-nova'
copyright = '2026, secmig-nova developers'
html_theme = 'alabaster'
release = ''
version = ''
exclude_patterns = ['_build']
