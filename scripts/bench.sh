#!/usr/bin/env bash
# Run the benchmarks (workloads vs baselines side by side) and print the ratio table.
#   bash scripts/bench.sh            full profile: 5k and 50k-file workloads, a few minutes on 2 cores
#   bash scripts/bench.sh --quick    small workloads, one round each (CI smoke; asserts nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
log=$(mktemp)
.venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
# Byte-compile the package as a wheel install would (an editable install compiles on first import,
# and never where PYTHONDONTWRITEBYTECODE is set: every CLI start would then compile ~80 modules).
.venv/bin/python -m compileall -q git_slicer >/dev/null
mkdir -p .benchmarks
.venv/bin/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json=.benchmarks/latest.json \
  --benchmark-columns=median,min,max,rounds --benchmark-sort=name "$@"
.venv/bin/python benchmarks/report.py .benchmarks/latest.json
