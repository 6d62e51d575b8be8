#!/usr/bin/env bash
# Install git-slicer with its test dependencies into .venv and run the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python3 -m venv .venv
log=$(mktemp)
.venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
# An editable install leaves out the wheel's data files (and replacing a plain install removes
# them): put the man pages back where `git help slicer` finds them, share/man next to bin/.
mkdir -p .venv/share/man/man1 && cp man/*.1 .venv/share/man/man1/
exec .venv/bin/python -m pytest "$@"
