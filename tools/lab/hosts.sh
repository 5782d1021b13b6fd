#!/usr/bin/env bash
# Two (or more) real libvirt "hosts" on this machine.
#
# Each host is a mount + UTS namespace held open by one process, with
# private bind mounts over /run, /etc/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt, its own hostname
# (lab-<name>) and host_uuid, and its own virtlogd and libvirtd. Everything
# else (/work, /tmp, the network namespace) is shared, so the hosts talk to
# each other over loopback, and a path such as /run/secmig/<id>.sock names
# a different socket on each host, as on real separate machines.
#
#   tools/lab/hosts.sh start [NAME...]    start hosts (default: a b); idempotent
#   tools/lab/hosts.sh stop [NAME...]     destroy guests, stop daemons (default: all)
#   tools/lab/hosts.sh status [NAME...]   one line per host; exit 1 if one is down
#   tools/lab/hosts.sh uri NAME           libvirt URI of the host, from anywhere
#   tools/lab/hosts.sh pid NAME           pid to use with nsenter -t PID -m -u
#   tools/lab/hosts.sh exec NAME CMD...   run CMD inside the host's namespaces
#   tools/lab/hosts.sh qemu-conf          print the lab's qemu.conf
#
# State lives in $SECMIG_LAB_DIR (default: <repo>/.lab) under hosts/<NAME>/.
# Needs root and tools/lab/install.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
LAB_DIR=${SECMIG_LAB_DIR:-$repo/.lab}
HOSTS_DIR=$LAB_DIR/hosts
# Shared by every lab state directory (tests use one per run).
CAPS_SEED=${SECMIG_LAB_CAPS_SEED:-$repo/.lab/qemu-capabilities}
START_TIMEOUT=${SECMIG_LAB_START_TIMEOUT:-90}
# Directory of the per-migration sockets ([secmig] socket_dir); exists on
# every host, privately.
SOCKET_DIR=/run/secmig
# QEMU's native-TLS migration credentials (VIR_MIGRATE_TLS; the benchmark's
# baseline): ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
# client-key.pem, written by tools/lab/lab.py (LabPki.qemu_tls). Inside the
# host, so under hosts/<NAME>/etc/ from outside.
MIGRATE_TLS_DIR=/etc/libvirt/migrate-tls
PRIVATE_DIRS="run:/run etc:/etc/libvirt lib:/var/lib/libvirt
log:/var/log/libvirt cache:/var/cache/libvirt"

die() { echo "hosts.sh: $*" >&2; exit 1; }

valid_name() {
    [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,15}$ ]] || die "invalid host name '$1'"
}

# Migration ports for the plain (unencrypted) libvirt transport; each host
# gets its own slice so concurrent prepares never race for a port.
port_base() {
    local n
    n=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
    echo $((49152 + (n % 16) * 32))
}

qemu_conf() {
    cat <<EOF
# secmig-lab: written by tools/lab/hosts.sh (see LAB-NOTES.md)
user = "root"
group = "root"
security_driver = "none"
swtpm_user = "root"
swtpm_group = "root"
# Guests run in the host's mount namespace; no per-guest /dev namespace and
# no cgroups (several libvirtds share this machine's cgroup tree).
namespaces = []
cgroup_controllers = []
EOF
    if [ -n "${1:-}" ]; then
        local base
        base=$(port_base "$1")
        printf 'migration_port_min = %d\nmigration_port_max = %d\n' \
            "$base" $((base + 31))
        # libvirtd refuses to start if this directory does not exist;
        # start_one creates it, lab.py fills it.
        printf 'migrate_tls_x509_cert_dir = "%s"\nmigrate_tls_x509_verify = 1\n' \
            "$MIGRATE_TLS_DIR"
    fi
}

host_dir() { echo "$HOSTS_DIR/$1"; }

# The lab's /etc/hosts, bind-mounted over /etc/hosts in every lab host:
# this machine's own entries plus "127.0.0.1 lab-<name>" for each host, one
# line per host (the first name of a line is the canonical name libvirt
# reports as its hostname, which nova takes as the node name).
# Rewritten in place (same inode) so running hosts see new names.
HOSTS_FILE=$LAB_DIR/etc-hosts
write_hosts_file() {
    local h
    {
        grep -v '# secmig-lab$' /etc/hosts 2>/dev/null || true
        for h in $( (all_hosts; printf '%s\n' "$@") | sort -u); do
            printf '127.0.0.1 lab-%s # secmig-lab\n' "$h"
        done
    } > "$HOSTS_FILE.new"
    cat "$HOSTS_FILE.new" > "$HOSTS_FILE"
    rm -f "$HOSTS_FILE.new"
}
sock_path() { echo "$(host_dir "$1")/run/libvirt/libvirt-sock"; }
uri() { echo "qemu+unix:///system?socket=$(sock_path "$1")"; }

# The holder pid, only if it still is this host's namespace holder (a
# recycled pid must never be taken for it).
holder_pid() {
    local d pid ns
    d=$(host_dir "$1")
    [ -f "$d/holder.pid" ] && [ -f "$d/holder.ns" ] || return 1
    pid=$(cat "$d/holder.pid")
    ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null) || return 1
    [ "$ns" = "$(cat "$d/holder.ns")" ] || return 1
    [ "$ns" != "$(readlink /proc/self/ns/mnt)" ] || return 1
    echo "$pid"
}

libvirt_up() {
    [ -S "$(sock_path "$1")" ] &&
        timeout 20 virsh -q -c "$(uri "$1")" hostname >/dev/null 2>&1
}

# Runs inside the new namespaces (via unshare): private mounts, hostname,
# daemons, then becomes the holder.
inner() {
    local name=$1 d=$2 pair
    for pair in $PRIVATE_DIRS; do
        mount --bind "$d/${pair%%:*}" "${pair#*:}"
    done
    mkdir -p /run/libvirt "$SOCKET_DIR" /var/lib/libvirt/qemu \
        /var/log/libvirt/qemu /var/cache/libvirt/qemu
    hostname "lab-$name"
    # Every lab host's name resolves to loopback inside every lab host (a
    # plain libvirt migration hands QEMU the destination's hostname).
    mount --bind "$HOSTS_FILE" /etc/hosts
    virtlogd -d
    libvirtd -d
    echo $$ > "$d/holder.pid.tmp"
    readlink /proc/self/ns/mnt > "$d/holder.ns"
    mv "$d/holder.pid.tmp" "$d/holder.pid"
    exec sleep infinity
}

start_one() {
    local name=$1 d pid= deadline uuid gone
    valid_name "$name"
    d=$(host_dir "$name")
    if pid=$(holder_pid "$name") && libvirt_up "$name"; then
        echo "host $name: already running (pid $pid)"
        return 0
    fi
    stop_one "$name" >/dev/null 2>&1 || true
    mkdir -p "$d"
    for pair in $PRIVATE_DIRS; do mkdir -p "$d/${pair%%:*}"; done
    write_hosts_file "$name"
    rm -rf "${d:?}/run/"* "$d/holder.pid" "$d/holder.ns"
    for pair in $PRIVATE_DIRS; do mkdir -p "${pair#*:}"; done
    [ -s "$d/host_uuid" ] || cat /proc/sys/kernel/random/uuid > "$d/host_uuid"
    uuid=$(cat "$d/host_uuid")
    [ -d /etc/libvirt ] && cp -an /etc/libvirt/. "$d/etc/"
    qemu_conf "$name" > "$d/etc/qemu.conf"
    mkdir -p "$d/etc/${MIGRATE_TLS_DIR#/etc/libvirt/}"
    cat > "$d/etc/libvirtd.conf" <<EOF
# secmig-lab host $name
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    # QEMU capabilities probed by an earlier host (seconds per probe);
    # libvirt re-probes whatever is stale.
    if [ -d "$CAPS_SEED" ]; then
        mkdir -p "$d/cache/qemu/capabilities"
        cp -n "$CAPS_SEED"/*.xml "$d/cache/qemu/capabilities/" 2>/dev/null || true
    fi
    setsid unshare -m -u --propagation private -- \
        "$here/hosts.sh" _inner "$name" "$d" \
        </dev/null >"$d/holder.log" 2>&1 &
    deadline=$((SECONDS + START_TIMEOUT))
    gone=0
    until pid=$(holder_pid "$name") && libvirt_up "$name"; do
        # A libvirtd whose drivers fail to initialise exits: fail fast.
        if [ -n "$pid" ] && ! daemon_in_ns "$(cat "$d/holder.ns")" libvirtd
        then
            gone=$((gone + 1))
        fi
        if [ $SECONDS -ge $deadline ] || [ $gone -gt 10 ]; then
            echo "host $name did not start; holder log:" >&2
            cat "$d/holder.log" >&2 || true
            tail -n 20 "$d/log/libvirtd.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
    echo "host $name: started (pid $pid, uuid $uuid, $(uri "$name"))"
}

# Processes whose mount namespace is the host's (QEMU, tunnels, daemons).
ns_members() {
    local ns=$1 p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
    done
    return 0
}

daemon_in_ns() {
    local p
    for p in $(ns_members "$1"); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] && return 0
    done
    return 1
}

save_caps() {
    local f
    for f in "$1"/cache/qemu/capabilities/*.xml; do
        [ -f "$f" ] || continue
        mkdir -p "$CAPS_SEED"
        [ -f "$CAPS_SEED/${f##*/}" ] && continue
        cp "$f" "$CAPS_SEED/.${f##*/}.$$" && mv "$CAPS_SEED/.${f##*/}.$$" "$CAPS_SEED/${f##*/}"
    done
}

stop_one() {
    local name=$1 d pid ns dom pids tries
    valid_name "$name"
    d=$(host_dir "$name")
    if ! pid=$(holder_pid "$name"); then
        echo "host $name: not running"
        rm -f "$d/holder.pid" "$d/holder.ns"
        return 0
    fi
    ns=$(cat "$d/holder.ns")
    if libvirt_up "$name"; then
        for dom in $(virsh -q -c "$(uri "$name")" list --name 2>/dev/null); do
            virsh -q -c "$(uri "$name")" destroy "$dom" >/dev/null 2>&1 || true
        done
    fi
    # Daemons first (SIGTERM), then whatever is left in the namespace,
    # the holder last.
    for tries in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        pids=$(ns_members "$ns" | grep -vx "$pid" || true)
        [ -n "$pids" ] || break
        if [ "$tries" -lt 15 ]; then
            kill -TERM $pids 2>/dev/null || true
        else
            kill -KILL $pids 2>/dev/null || true
        fi
        sleep 0.25
    done
    kill -TERM "$pid" 2>/dev/null || true
    rm -f "$d/holder.pid" "$d/holder.ns"
    save_caps "$d"
    echo "host $name: stopped"
}

status_one() {
    local name=$1 pid
    valid_name "$name"
    if pid=$(holder_pid "$name") && libvirt_up "$name"; then
        echo "host $name: up pid=$pid hostname=$(nsenter -t "$pid" -u hostname)" \
            "uuid=$(cat "$(host_dir "$name")/host_uuid")" \
            "guests=$(virsh -q -c "$(uri "$name")" list --name | xargs echo)" \
            "uri=$(uri "$name")"
    else
        echo "host $name: down"
        return 1
    fi
}

all_hosts() {
    [ -d "$HOSTS_DIR" ] || return 0
    find "$HOSTS_DIR" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    start)
        [ "$(id -u)" = 0 ] || die "must run as root"
        command -v libvirtd >/dev/null || die "libvirtd missing: run tools/lab/install.sh"
        [ $# -gt 0 ] || set -- a b
        for h in "$@"; do start_one "$h"; done ;;
    stop)
        [ $# -gt 0 ] || set -- $(all_hosts)
        for h in "$@"; do stop_one "$h"; done ;;
    status)
        [ $# -gt 0 ] || set -- $(all_hosts)
        rc=0
        for h in "$@"; do status_one "$h" || rc=1; done
        exit $rc ;;
    uri) valid_name "${1:-}"; uri "$1" ;;
    pid) valid_name "${1:-}"; holder_pid "$1" || die "host $1 is not running" ;;
    exec)
        valid_name "${1:-}"
        pid=$(holder_pid "$1") || die "host $1 is not running"
        shift
        exec nsenter -t "$pid" -m -u -- "$@" ;;
    qemu-conf) qemu_conf "$@" ;;
    _inner) inner "$@" ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
esac
