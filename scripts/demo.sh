#!/usr/bin/env bash
# Install git-slicer into .venv, then push a repository into a freshly launched local VM,
# work in it as an agent would, and pull the work back.
#   bash scripts/demo.sh [REPO]     (default: a small demo repository in a temp dir)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/install-system-deps.sh" --minimal
python3 -m venv "$here/.venv"
log=$(mktemp)
"$here/.venv/bin/python" -m pip install -q "$here" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
export PATH="$here/.venv/bin:$PATH"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

repo=${1:-}
if [ -z "$repo" ]; then
  repo=$(mktemp -d)/demo
  git init -q -b main "$repo"
  git -C "$repo" config user.name "Demo User"
  git -C "$repo" config user.email demo@example.com
  printf 'def greet():\n    return "hello"\n' > "$repo/app.py"
  printf 'node_modules/\n.env\n' > "$repo/.slicerignore"
  git -C "$repo" add -A && git -C "$repo" commit -qm "initial commit"
  printf 'TOKEN=host-secret\n' > "$repo/.env"                   # never leaves the host
  printf '# TODO\n' >> "$repo/app.py"                           # an uncommitted edit
  printf 'notes\n' > "$repo/NOTES.md"                           # an untracked file
fi
cd "$repo"
step git status --short
step git slicer push --launch
vm=$(git slicer list --json | python3 -c 'import json,sys; print([r["vm"] for r in json.load(sys.stdin) if r["current"] and r["vm"]][-1])')
step git slicer exec "$vm" -- git status --short
step git slicer exec "$vm" -- sh -c 'test ! -e .env && echo ".env stayed on the host"'
step git slicer exec "$vm" -- sh -c 'git add -A && git commit -qm "agent: finish TODO" && echo "# reviewed" >> NOTES.md && git log --oneline -2'
step git slicer status "$vm"
step git slicer pull "$vm"
step git log --oneline -3
step git status --short
step git slicer list
printf '\nDone. Remove the VM with: git slicer vm rm %s\n' "$vm"
printf '\n`git slicer` is installed in %s/.venv/bin. To use it (and `git help slicer`) in your shell:\n' "$here"
printf '    export PATH="%s/.venv/bin:$PATH"    # add to ~/.bashrc to keep it\n' "$here"
printf '    pipx install %s                     # or: its own venv, on PATH through ~/.local/bin\n' "$here"
