#!/usr/bin/env bash
# The demo command of the README: set up .venv if needed, then train a small NAT on scikit-learn's digits (CPU,
# a few minutes). Data preparation runs automatically on first use; extra arguments go to `lit_nat fit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${LIT_NAT_VENV:-.venv}/bin/python" -m lit_nat fit --config configs/demo_digits.yaml "$@"
