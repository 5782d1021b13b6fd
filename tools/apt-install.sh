#!/usr/bin/env bash
# Install whichever of the named Debian packages are missing (as root),
# without letting their maintainer scripts start services: there is no
# init system here, and the tests and the lab start their own RabbitMQ
# nodes and libvirtds. Idempotent and quick when everything is there.
#
#   tools/apt-install.sh [--with-lists] PACKAGE...
#
# --with-lists: also fetch the package lists when there are none (the
# lab's guest build downloads .debs with apt-get download).
set -euo pipefail
with_lists=
if [ "${1:-}" = --with-lists ]; then
    with_lists=1
    shift
fi
[ "$(id -u)" = 0 ] || { echo "apt-install.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "$@"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
        missing+=("$p")
done
no_lists() {
    local f
    for f in /var/lib/apt/lists/*; do
        case ${f##*/} in
            lock|partial|'*') ;;
            *) return 1 ;;
        esac
    done
    return 0
}
if [ ${#missing[@]} -eq 0 ] && { [ -z "$with_lists" ] || ! no_lists; }; then
    exit 0
fi
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
