#!/usr/bin/env bash
# The cloud demo: a real OpenStack on this machine (tools/cloud/cloud.sh)
# moves a running guest with `openstack server migrate --live-migration`
# through SecureLibvirtDriver, there and back, and the receipts of each
# migration are verified offline. Every command a user would type is
# printed before it runs. Fresh Debian 12 machine, as root, from a clean
# clone; bring-up takes about 5-10 minutes (install included), the demo
# itself about 2. The cloud is torn down at the end unless
# SECMIG_CLOUD_KEEP=1 (it is then reused by the next run).
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo=$PWD
state=${SECMIG_CLOUD_DIR:-$repo/.cloud}
server=secmig-demo
t0=$SECONDS

step() { printf '\n== [%4d s] %s\n' $((SECONDS - t0)) "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }
down() {
    local rc=$?
    if [ "${SECMIG_CLOUD_KEEP:-0}" != 1 ]; then
        step "tearing the cloud down"
        python3 tools/cloud/cloud.py down || rc=1
    fi
    exit $rc
}

step "installing what is missing (Debian packages, the cloud's venv)"
bash tools/install-deps.sh
if [ "${SECMIG_CLOUD_KEEP:-0}" = 1 ] && [ -f "$state/cloud.env" ] &&
        python3 tools/cloud/cloud.py status >/dev/null 2>&1; then
    step "reusing the running cloud ($state)"
else
    trap down EXIT
    step "bringing the cloud up: MariaDB, RabbitMQ, Keystone, Placement," \
         "Glance, neutron, nova (api, conductor, scheduler), two" \
         "nova-compute on two libvirt hosts, a secmig-broker per trust cloud"
    bash tools/cloud/cloud.sh up
fi
[ "${SECMIG_CLOUD_KEEP:-0}" = 1 ] || trap down EXIT

# The credentials and names the cloud wrote (KEY='value' lines).
set -a
# shellcheck disable=SC1091
. "$state/cloud.env"
set +a
export PATH=$SECMIG_CLOUD_VENV/bin:$PATH
export OS_USERNAME=$SECMIG_CLOUD_OPERATOR OS_PROJECT_NAME=$SECMIG_CLOUD_PROJECT
read -r host_a host_b <<< "$SECMIG_CLOUD_HOSTS"

heartbeat() {
    openstack console log show "$server" 2>/dev/null |
        sed -n 's/.*SECMIG-HEARTBEAT \([0-9]*\).*/\1/p' | tail -n 1
}
wait_heartbeat() {
    # The guest's counter, once it is above $1 (at most 120 s).
    local above=$1 beat deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        beat=$(heartbeat)
        if [ -n "$beat" ] && [ "$beat" -gt "$above" ]; then
            echo "$beat"
            return 0
        fi
        sleep 2
    done
    echo "no heartbeat above $above from $server within 120 s" >&2
    return 1
}
# What only an admin sees (the server's host, migration records).
as_admin() {
    OS_USERNAME=$SECMIG_CLOUD_ADMIN \
        OS_PROJECT_NAME=$SECMIG_CLOUD_ADMIN_PROJECT openstack "$@"
}
host_of() {
    as_admin server show "$server" -f value -c OS-EXT-SRV-ATTR:host
}
where() {
    as_admin server show "$server" -f value \
        -c status -c OS-EXT-SRV-ATTR:host | paste -sd' '
}

step "as $OS_USERNAME (project $OS_PROJECT_NAME, role migration_operator):" \
     "a server whose flavor requires secure migration"
show openstack flavor show "$SECMIG_CLOUD_FLAVOR" -f value -c properties
openstack server delete --wait "$server" >/dev/null 2>&1 || true
printf '$ %s %s\n' "openstack server create --flavor $SECMIG_CLOUD_FLAVOR" \
    "--image $SECMIG_CLOUD_IMAGE --nic none --wait $server"
server=$(openstack server create --flavor "$SECMIG_CLOUD_FLAVOR" \
    --image "$SECMIG_CLOUD_IMAGE" --nic none --wait -f value -c id \
    "$server")
echo "server id: $server (the admin, in another project, needs the id)"
echo "status and host (admin view): $(where)"
# The scheduler chose; the demo moves the server to the other host and back.
first=$(host_of)
if [ "$first" = "$host_b" ]; then
    host_b=$host_a host_a=$first
fi
beat=$(wait_heartbeat 0)
echo "the guest is running: heartbeat #$beat on its serial console"

for dst in "$host_b" "$host_a"; do
    src=$(host_of)
    step "live migration $src -> $dst through the secmig tunnel"
    show openstack --os-compute-api-version 2.latest server migrate \
        --live-migration --host "$dst" --wait "$server"
    echo "status and host (admin view): $(where)"
    migration=$(as_admin --os-compute-api-version 2.latest server \
        migration list --server "$server" -f value -c UUID -c Status \
        --sort-column Id | tail -n 1)
    echo "migration (uuid, status): $migration"
    before=$beat
    beat=$(wait_heartbeat "$beat")
    echo "heartbeat #$before before, now #$beat on $dst (same guest, no reboot)"
    dst_cloud_var=SECMIG_CLOUD_TRUST_${dst//-/_}
    dst_cloud=${!dst_cloud_var}
    step "both receipts of migration ${migration%% *}, verified offline"
    show secmig-nova-manage receipts verify \
        --config-file "$state/secmig/$dst_cloud/broker.conf" \
        --ca "cloud-a=$state/secmig/cloud-a/ca/ca.crt" \
        --ca "cloud-b=$state/secmig/cloud-b/ca/ca.crt" "${migration%% *}"
done

step "cleaning up the server"
show openstack server delete --wait "$server"
step "done: the guest moved $host_a -> $host_b -> $host_a with" \
     "openstack server migrate --live-migration, receipts verified"
