"""`.slicerignore`: gitignore-syntax patterns for paths that never leave the host."""

from __future__ import annotations

import os
import stat

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


MAX_EXCLUDES_BYTES = 1 << 20


def host_excludes(worktree) -> list:
    """The patterns of the host's ignore sources beyond `.gitignore` files, lowest precedence
    first: core.excludesFile (default `$XDG_CONFIG_HOME/git/ignore`), then `info/exclude`. Push
    sends the patterns themselves (never a host path) and the VM keeps them as its
    `.git/info/exclude`, so git ignores there exactly what it ignores here."""
    configured = worktree.git(["config", "--type=path", "--get", "core.excludesFile"], check=False)
    configured = os.fsdecode(configured.rstrip(b"\n"))
    if not configured:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        configured = os.path.join(xdg, "git", "ignore")
    lines = []
    for path in (os.path.join(worktree.root, configured), worktree.git_path("info/exclude")):
        lines += _read_patterns(path)
    return lines


def _read_patterns(path: str) -> list:
    """A pattern file's lines; nothing for a missing file or anything but a regular file (a FIFO
    or device is never read), at most MAX_EXCLUDES_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_EXCLUDES_BYTES)
    finally:
        os.close(fd)
    return [line for line in data.decode("utf-8", "surrogateescape").splitlines()
            if line.strip() and not line.startswith("#")]
