#!/usr/bin/env bash
# Run optiserve's test suite on a fresh machine: creates .venv (if missing), installs the
# package with its test extras (torch pinned to the CPU wheel by constraints.txt), the real
# tools the tests use (helm, kubectl, prometheus/promtool), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt -e '.[cpu,dev,tune]'
scripts/install-tools.sh
export PATH="$PWD/.tools/bin:$PATH"
export HF_HUB_OFFLINE=1
exec python -m pytest -q "$@"
