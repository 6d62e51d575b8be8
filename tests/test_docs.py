"""Docs that must match the code."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_table_matches_code():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- config-table -->\n(.*?)\n<!-- /config-table -->", readme, re.S).group(1)
    generated = subprocess.check_output([sys.executable, str(ROOT / "scripts" / "config-table.py")]).decode().strip()
    assert table == generated, "README config table is stale: run python3 scripts/config-table.py"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "    bash scripts/demo.sh\n" in readme and "    bash scripts/test.sh\n" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
