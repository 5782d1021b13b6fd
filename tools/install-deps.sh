#!/usr/bin/env bash
# System packages the tests and the demo need on a fresh Debian 12 machine
# (as root): Python venv support, RabbitMQ and MariaDB (the broker's
# functional tests start their own server of each), and libvirt + QEMU with the lab's settings
# (tools/lab/install.sh). Idempotent and quick when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "install-deps.sh must run as root" >&2; exit 1; }
packages=(rabbitmq-server mariadb-server mariadb-client shellcheck)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v git >/dev/null || packages+=(git)
bash tools/apt-install.sh "${packages[@]}"
bash tools/lab/install.sh
