#!/usr/bin/env bash
# Configure secmig-nova in the test cloud through the devstack plugin's own
# functions (devstack/lib/secmig), with stand-ins for the few devstack
# helpers they use. tools/cloud/cloud.py runs it; the plugin's output is
# what the cloud's nova and brokers run with.
#
#   configure-secmig.sh ca|nova|broker|accounts
#
# Everything else comes from the environment, as devstack's settings would:
# SECMIG_CLOUD_ID, SECMIG_CONF_DIR, NOVA_CONF, NOVA_CPU_CONF, NOVA_CONF_DIR,
# SECMIG_DB_CONNECTION, SECMIG_TRANSPORT_URL (the cloud's broker vhost),
# SECMIG_PEERS, KEYSTONE_SERVICE_URI, SERVICE_PASSWORD, HOST_IP, VENV_BIN,
# and the OS_* variables of a system-scoped admin (accounts).
# `ca` and `nova` run inside the compute host's namespaces (hosts.sh exec),
# where `hostname -s` is the host's own name, as on a real compute host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# -- stand-ins for devstack's functions -----------------------------------
export STACK_USER
STACK_USER=$(id -un)
DEST=${DEST:-$(dirname "$repo")}
DATA_DIR=${DATA_DIR:-$SECMIG_CONF_DIR/data}
ENABLE_DEBUG_LOG_LEVEL=${ENABLE_DEBUG_LOG_LEVEL:-True}
enable_service() { :; }
is_service_enabled() { return 0; }
echo_summary() { echo "$*"; }
get_python_exec_prefix() { echo "$VENV_BIN"; }
setup_develop() { :; }
# Everything runs as root here.
sudo() { "$@"; }
get_transport_url() { echo "$SECMIG_TRANSPORT_URL"; }
iniset() {
    python3 -I -S - "$@" <<'PY'
import configparser, os, sys
path, section, key, value = sys.argv[1:5]
cp = configparser.RawConfigParser()
cp.optionxform = str
if os.path.exists(path):
    cp.read(path)
if section != 'DEFAULT' and not cp.has_section(section):
    cp.add_section(section)
cp.set(section, key, value)
with open(path + '.tmp', 'w') as f:
    cp.write(f)
os.replace(path + '.tmp', path)
PY
}
iniget() {
    python3 -I -S - "$@" <<'PY'
import configparser, sys
path, section, key = sys.argv[1:4]
cp = configparser.RawConfigParser()
cp.optionxform = str
cp.read(path)
print(cp.get(section, key, fallback=''))
PY
}
openstack() { "$VENV_BIN/openstack" "$@"; }
get_or_create_role() {
    openstack role show "$1" -f value -c id 2>/dev/null ||
        openstack role create "$1" -f value -c id
}
create_service_user() {
    local user=$1 role=${2:-service}
    openstack user show "$user" --domain Default -f value -c id >/dev/null 2>&1 ||
        openstack user create "$user" --domain Default \
            --password "$SERVICE_PASSWORD" -f value -c id >/dev/null
    openstack role add --user "$user" --user-domain Default \
        --project service --project-domain Default "$role"
}
get_or_add_user_project_role() {
    openstack role add --user "$2" --user-domain Default \
        --project "$3" --project-domain Default "$1"
}

# -- the plugin ------------------------------------------------------------
# shellcheck source=devstack/settings
source "$repo/devstack/settings"
# shellcheck source=devstack/lib/secmig
source "$repo/devstack/lib/secmig"

case ${1:-} in
    ca) configure_secmig_ca ;;
    nova) configure_secmig_nova ;;
    broker) configure_secmig_broker ;;
    accounts) create_secmig_accounts ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
