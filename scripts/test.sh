#!/usr/bin/env bash
# The test command of the README: set up .venv if needed, then run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${LIT_NAT_VENV:-.venv}/bin/python" -m pytest "$@"
