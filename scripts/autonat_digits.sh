#!/usr/bin/env bash
# AutoNAT's strategy optimisation on the digits (the README's Tables 6a/6b at small scale): set up .venv if needed,
# then run scripts/autonat_digits.py (about 25 min on a 2-core CPU; resumable; extra arguments go to the script,
# e.g. --quick for a pipeline check in a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${LIT_NAT_VENV:-.venv}/bin/python" scripts/autonat_digits.py "$@"
