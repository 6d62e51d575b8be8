"""What the host worktree holds beyond its HEAD commit, filtered by `.slicerignore`."""

from __future__ import annotations

import os

from .errors import SlicerError
from .ignore import SlicerIgnore
from .wire import overlay as overlay_mod
from .wire.paths import display


def host_overlay(worktree, ignore: SlicerIgnore = None) -> dict:
    """The worktree's overlay (see wire/overlay.py) minus `.slicerignore`d paths."""
    ignore = ignore or SlicerIgnore(worktree.root)
    for attempt in range(3):
        try:
            raw = overlay_mod.scan(worktree.root, worktree.git, worktree.algo)
            break
        except overlay_mod.UnmergedPaths as exc:
            raise SlicerError("the worktree has unmerged paths: %s" % ", ".join(map(display, exc.paths[:5])),
                              hint="resolve the merge first") from None
        except overlay_mod.FileChanged:
            if attempt == 2:
                raise SlicerError("files keep changing while they are scanned; try again") from None
    return overlay_mod.filtered(raw, ignore.keep)


def ignored_files(worktree, ignore: SlicerIgnore) -> list:
    """Gitignored (but not slicerignored) regular files and symlinks, for --include-ignored."""
    out = worktree.git(["ls-files", "-z", "--others", "--ignored", "--exclude-standard"])
    paths = []
    for raw in out.split(b"\0"):
        if not raw:
            continue
        path = os.fsdecode(raw)
        if path.endswith("/") or not ignore.keep(path):
            continue
        paths.append(path)
    return paths
