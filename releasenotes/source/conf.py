"""Sphinx configuration of the secmig-nova release notes (reno)."""

extensions = ['reno.sphinxext']
source_suffix = '.rst'
master_doc = 'index'
project = 'secmig-nova Release Notes'
copyright = '2026, secmig-nova developers'
html_theme = 'alabaster'
release = ''
version = ''
