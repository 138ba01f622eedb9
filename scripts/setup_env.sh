#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv with the pinned versions of constraints/ci.txt.
# Idempotent: re-installs only when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LIT_NAT_VENV:-.venv}
stamp_want=$(cat pyproject.toml constraints/ci.txt | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.lit_nat_stamp" ] && [ "$(cat "$VENV/.lit_nat_stamp")" = "$stamp_want" ]; then
  exit 0
fi
echo "setting up $VENV (torch, lightning, torchmetrics, webdataset ...; about two minutes)" >&2
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints/ci.txt -e '.[dev,amused,lora]'
echo "$stamp_want" > "$VENV/.lit_nat_stamp"
