#!/usr/bin/env bash
# The one-machine OpenStack of secmig-nova's cloud tests (see cloud.py):
#
#   tools/cloud/cloud.sh up       install what is missing, bring the cloud up
#   tools/cloud/cloud.sh status   one line per service and lab host
#   tools/cloud/cloud.sh down     stop what `up` started, delete its data
#   tools/cloud/cloud.sh restart-compute cmp-b [--secmig-enforcement MODE]
#                                 restart one host's nova-compute (in MODE)
#
# State in $SECMIG_CLOUD_DIR (default <repo>/.cloud); the env file
# <state>/cloud.env has the credentials the tests and the CLI use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = up ]; then
    bash "$here/install.sh"
fi
exec python3 "$here/cloud.py" "$@"
