#!/usr/bin/env bash
# Regenerate every generated deployment file after changing serving/metrics.py, serving/config.py,
# the chart or an overlay's values: dashboards + alert rules (grafana/, the chart's files/), the
# chart's values.schema.json, and k8s/ (from `helm template`). tests/deploy fails until this ran.
set -euo pipefail
cd "$(dirname "$0")/.."
python grafana/generate.py
python scripts/gen_values_schema.py
python scripts/render_k8s.py
