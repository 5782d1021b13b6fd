#!/usr/bin/env bash
# System packages the tests and the demo need on a fresh Debian 12 machine
# (as root): Python venv support, RabbitMQ (the broker's functional tests
# start their own node), and libvirt + QEMU with the lab's settings
# (tools/lab/install.sh). Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install-deps.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
packages=(rabbitmq-server shellcheck)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v git >/dev/null || packages+=(git)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    # No init system: keep maintainer scripts from starting a system
    # RabbitMQ; the tests start private nodes.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
bash tools/lab/install.sh
