#!/usr/bin/env bash
# README command 1 (until the real libvirt demo lands): build the venv and
# run the tunnel benchmark: two secmig-tunnel processes moving random bytes
# from a UNIX-socket writer to a UNIX-socket reader, against a plain
# forwarder baseline in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-venv.sh
exec .venv/bin/python tools/bench_tunnel.py "$@"
