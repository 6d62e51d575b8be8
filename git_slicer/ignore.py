"""`.slicerignore`: gitignore-syntax patterns for paths that never leave the host."""

from __future__ import annotations

import os

IGNORE_FILE = ".slicerignore"


class SlicerIgnore:
    def __init__(self, root: str):
        self.spec = None
        try:
            with open(os.path.join(root, IGNORE_FILE), encoding="utf-8", errors="surrogateescape") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return
        import pathspec
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def ignored(self, path: str) -> bool:
        """True if `path` (worktree-relative, '/'-separated) or any parent dir is ignored."""
        if self.spec is None:
            return False
        if self.spec.match_file(path):
            return True
        parts = path.split("/")
        return any(self.spec.match_file("/".join(parts[:i]) + "/") for i in range(1, len(parts)))

    def keep(self, path: str) -> bool:
        return not self.ignored(path)
