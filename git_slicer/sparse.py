"""Which paths the host's sparse-checkout leaves out of the worktree (as `git checkout` decides).

A pull never writes committed content outside the sparse cone, and keeps such index entries
marked skip-worktree, exactly as a checkout of the new commit would. Paths already in the index
are judged by their skip-worktree bit; new paths by the patterns in `info/sparse-checkout`
(cone mode: directories; otherwise gitignore-style patterns).
"""

from __future__ import annotations

import os
import re


class SparseCheckout:
    def __init__(self, skipped: set, indexed: set, cone: bool, lines: list):
        self.skipped = skipped
        self.indexed = indexed
        self.cone = cone
        self.recursive, self.parents, self.spec = set(), set(), None
        if cone:
            for line in lines:
                negated = line.startswith("!")
                body = _unescape(line[1:] if negated else line).strip("/")
                if negated and body.endswith("/*"):
                    self.parents.add(body[:-2])
                elif not negated and body and body != "*":
                    self.recursive.add(body)
            self.recursive -= self.parents
        else:
            import pathspec             # lazy: only non-cone patterns need it (~20 ms)
            self.spec = pathspec.GitIgnoreSpec.from_lines(lines)

    @classmethod
    def of(cls, worktree):
        """The worktree's sparse-checkout, or None when it has none."""
        if (worktree.config("core.sparseCheckout") or "false").lower() not in ("true", "yes", "on", "1"):
            return None
        cone = (worktree.config("core.sparseCheckoutCone") or "true").lower() in ("true", "yes", "on", "1")
        try:
            with open(worktree.git_path("info/sparse-checkout"), encoding="utf-8", errors="surrogateescape") as fh:
                lines = [l for l in fh.read().splitlines() if l.strip() and not l.startswith("#")]
        except OSError:
            lines = []
        skipped, indexed = set(), set()
        for item in worktree.git(["ls-files", "-t", "-z"]).split(b"\0"):
            if len(item) > 2:
                path = os.fsdecode(item[2:])
                indexed.add(path)
                if item[:1] == b"S":
                    skipped.add(path)
        return cls(skipped, indexed, cone, lines)

    def outside(self, path: str) -> bool:
        """True if a checkout would leave `path` out of the worktree (skip-worktree)."""
        if path in self.indexed:
            return path in self.skipped
        if not self.cone:
            return not self.spec.match_file(path)
        dirs = path.split("/")[:-1]
        if not dirs:
            return False                             # files at the top are always in the cone
        if "/".join(dirs) in self.parents:
            return False                             # files directly in a directory leading to the cone
        return not any("/".join(dirs[:i]) in self.recursive for i in range(1, len(dirs) + 1))


def _unescape(pattern: str) -> str:
    return re.sub(r"\\(.)", r"\1", pattern)
