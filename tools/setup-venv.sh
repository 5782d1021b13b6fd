#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv and install
# secmig-nova with its test and lab requirements (libvirt-python builds
# against libvirt-dev: run tools/install-deps.sh first). Idempotent; used
# by the README commands and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "secmig-nova needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.secmig-reqs
want=$(cat requirements.txt test-requirements.txt lab-requirements.txt \
       setup.cfg | sha256sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r requirements.txt -r test-requirements.txt \
        -r lab-requirements.txt
    .venv/bin/pip install -q -e .
    echo "$want" > "$stamp"
fi
