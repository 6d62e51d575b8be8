"""Print the README's configuration table from git_slicer.config (the single source)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from git_slicer.config import KEYS, PER_VM_KEYS  # noqa: E402


def table() -> str:
    rows = ["| key | type | default | env override | meaning |", "| --- | --- | --- | --- | --- |"]
    for key in KEYS + PER_VM_KEYS:
        default = key.default
        if isinstance(default, bool):
            default = str(default).lower()
        rows.append("| `%s` | %s | %s | %s | %s |" % (key.name, key.kind, "`%s`" % default if default != "" else "-",
                                                    "`%s`" % key.env if key.env else "-", key.help))
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
