"""secmig-nova: secure live migration for OpenStack Nova."""
