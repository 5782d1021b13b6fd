#!/usr/bin/env bash
# README command 1: on a fresh Debian 12 machine (as root), install what
# the lab needs, start two real libvirt hosts on this machine, boot a tiny
# guest on host A and live-migrate it A -> B -> A with secmig-migrate: the
# embedded brokers of clouds lab-a and lab-b authorize and grant, the
# guest's memory goes through two secmig-tunnel processes (TLS 1.3, pinned
# certificates, checkpoints), and both signed receipts of each migration
# are verified, then verified again offline with secmig-nova-manage.
# Options: --keep (leave the hosts and .lab/ state), --progress.
# Timing comparison with plain migration: tools/bench_migration.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/setup-venv.sh
bash tools/lab/guest.sh build
exec .venv/bin/python tools/lab/lab.py demo "$@"
