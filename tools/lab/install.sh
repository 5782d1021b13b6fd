#!/usr/bin/env bash
# Install what the real-libvirt lab needs on Debian 12 (run as root):
# libvirt + QEMU (TCG guests), the user/group libvirtd insists on, a
# system qemu.conf with the lab's settings, and optionally libvirt-python
# into a virtualenv. Idempotent: a second run only checks and exits.
#
#   tools/lab/install.sh [--venv PATH]
#
# Each lab host gets its own copy of /etc/libvirt (tools/lab/hosts.sh); the
# system qemu.conf written here matches it so a plain `libvirtd` agrees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=
while [ $# -gt 0 ]; do
    case $1 in
        --venv) venv=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

# Packages (LAB-NOTES.md): libvirt 9.0 + QEMU 7.2 from bookworm. cpio and
# dpkg-deb build the guest; gcc and pkg-config build libvirt-python;
# tcpdump captures migration traffic on loopback (tests/functional/lab).
packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
          libvirt-dev pkg-config qemu-system-x86 qemu-utils cpio gzip
          util-linux gcc tcpdump)

# libvirtd refuses to start without them; create them before the packages
# so their maintainer scripts find them too.
# Debian's QEMU driver resolves its built-in default user and group
# (both libvirt-qemu) before it reads qemu.conf.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
    useradd -r -g kvm -G libvirt-qemu -d /var/lib/libvirt \
        -s /usr/sbin/nologin libvirt-qemu

# The guest build downloads .debs; that needs package lists too.
bash "$repo/tools/apt-install.sh" --with-lists "${packages[@]}"

conf=/etc/libvirt/qemu.conf
want=$("$here/hosts.sh" qemu-conf)
if [ "$(cat $conf 2>/dev/null)" != "$want" ]; then
    if [ -s $conf ] && ! grep -q '^# secmig-lab' $conf; then
        cp -n $conf $conf.dist
    fi
    mkdir -p /etc/libvirt
    printf '%s\n' "$want" > $conf
fi

if [ -n "$venv" ]; then
    py=$venv/bin/python
    if [ ! -x "$py" ]; then
        python3 -c 'import venv, ensurepip' 2>/dev/null ||
            bash "$repo/tools/apt-install.sh" python3-venv
        python3 -m venv "$venv"
    fi
    if ! "$py" -c 'import libvirt' 2>/dev/null; then
        # libvirt-python is an sdist: it compiles against this Python's
        # headers and libvirt-dev.
        inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
        if [ ! -f "$inc/Python.h" ]; then
            bash "$repo/tools/apt-install.sh" python3-dev
        fi
        "$py" -m pip install -q -r "$repo/lab-requirements.txt"
    fi
fi
echo "lab prerequisites installed"
