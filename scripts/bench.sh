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
# Installed as users install it (`pipx install .`: a plain, byte-compiled install), so the numbers
# include neither an editable install's import hook nor compiling ~80 modules per start where
# PYTHONDONTWRITEBYTECODE is set. scripts/test.sh puts the editable install back.
.venv/bin/python -m pip install -q --force-reinstall --no-deps . >"$log" 2>&1 \
  && .venv/bin/python -m pip install -q '.[test]' >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
mkdir -p .benchmarks
.venv/bin/python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json=.benchmarks/latest.json \
  --benchmark-columns=median,min,max,rounds --benchmark-sort=name "$@"
.venv/bin/python benchmarks/report.py .benchmarks/latest.json
