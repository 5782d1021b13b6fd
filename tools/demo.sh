#!/usr/bin/env bash
# README command 1: on a fresh Debian 12 machine (as root), install what
# the lab needs, start two real libvirt hosts on this machine, boot a tiny
# guest on host A and live-migrate it A -> B -> A, once plainly and once
# through the secmig tunnel (TLS 1.3, pinned certificates, checkpoints,
# signed receipts), printing one JSON line per step: timings, bytes,
# downtime, the tunnels' outcome and the guest's heartbeat before and
# after each move. The tunnel benchmark is tools/bench_tunnel.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/setup-venv.sh
bash tools/lab/guest.sh build
exec .venv/bin/python tools/lab/lab.py demo "$@"
