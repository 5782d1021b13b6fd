#!/usr/bin/env bash
# The project's test command (README.md, .ci/run): sets up .venv, then runs
# secmig-nova's own test suite with stestr and flake8.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-venv.sh
.venv/bin/flake8 secmig_nova tests tools
.venv/bin/python -m stestr --test-path ./tests run "$@"
