"""Regenerate man/*.1 from the click commands (run after changing any command's help)."""
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
from git_slicer.cli.manpages import render_all  # noqa: E402

man = root / "man"
man.mkdir(exist_ok=True)
pages = render_all()
for stale in man.glob("*.1"):
    if stale.name not in pages:
        stale.unlink()
for name, text in pages.items():
    (man / name).write_text(text)
print("wrote %d pages to %s" % (len(pages), man))
