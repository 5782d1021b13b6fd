#!/usr/bin/env bash
# Install what the test cloud (tools/cloud/cloud.sh) needs and is missing:
# Debian's mariadb-server and iptables (and the lab's libvirt/QEMU/RabbitMQ
# through tools/lab/install.sh when absent), and a separate virtualenv .venv-cloud
# holding the OpenStack services pinned next to nova 34, uwsgi, PyMySQL,
# libvirt-python and secmig-nova itself (editable, so nova-compute loads
# this working tree's driver). Idempotent; a stamp skips pip when the pins
# did not change.
#
# Why a separate venv: the project's .venv is used by the test suite while
# this runs (someone may be running it right now); adding glance, neutron
# and their ~200 dependencies there could change versions under it.
#
#   tools/cloud/install.sh [--venv PATH]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
VENV=${SECMIG_CLOUD_VENV:-$repo/.venv-cloud}
if [ "${1:-}" = "--venv" ]; then VENV=$2; fi
PYTHON=${PYTHON:-python3}

# The OpenStack 2026.2 set (nova 34); resolved together without conflicts.
PINS=(
    nova==34.0.0 openstack-placement==16.0.0 glance==33.0.0
    neutron==29.0.0 keystone==30.0.0 python-openstackclient==10.3.1
    osc-placement PyMySQL 'SQLAlchemy<2.1' uwsgi 'libvirt-python>=9.0.0'
)

step() { printf '[install] %s\n' "$*"; }
t0=$SECONDS

[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root" >&2; exit 1; }

# Maintainer scripts must not start a system MariaDB or RabbitMQ: the cloud
# starts its own (tools/apt-install.sh keeps them from starting). iptables:
# the fault tests' man in the middle (a NAT rule on loopback traffic to
# the tunnel ports, tests/functional/cloud/wire.py).
bash "$repo/tools/apt-install.sh" mariadb-server mariadb-client \
    rabbitmq-server iptables
if ! command -v libvirtd >/dev/null || ! command -v qemu-system-x86_64 >/dev/null; then
    step "tools/lab/install.sh (libvirt, QEMU)"
    bash "$repo/tools/lab/install.sh"
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp=$VENV/.secmig-cloud-pins
want=$( (printf '%s\n' "${PINS[@]}"; cat "$repo/requirements.txt") | sha256sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    step "pip install ${PINS[*]}"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PINS[@]}"
    "$VENV/bin/pip" install -q -e "$repo"
    "$VENV/bin/pip" check
    echo "$want" > "$stamp"
fi
step "done in $((SECONDS - t0)) s ($VENV)"
