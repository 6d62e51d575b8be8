"""Nothing from the VM runs on the host: a pull never writes, unasked, into the hooks git runs.

The default hooks directory lies inside the git directory, which a pull never writes. But
core.hooksPath may point into the worktree itself (`.githooks/`, husky's `.husky/`): files there
are worktree files like any other, which a VM can change or commit, and git would run them at
the host's next commit. A pull that would change anything there (or a directory above it) is
refused unless the user accepts it on the host, after reviewing it (`git slicer diff`):
`pull --accept-hook-changes`.
"""

from __future__ import annotations

import os

from .errors import UnsafeInput
from .wire.paths import display

SHOWN = 10


class HookChange(UnsafeInput):
    """A pull would change a hook git runs on the host."""


def hooks_in_worktree(worktree):
    """The hooks directory git runs, as a worktree-relative path when it lies in the worktree
    (not in its git directory); else None. For husky's `.husky/_`, whose scripts run the hooks
    in `.husky/`, that is `.husky`."""
    if not worktree.config("core.hooksPath"):
        return None                                 # the git directory's own: never written by a pull
    directory = os.path.realpath(worktree.git_path("hooks"))
    root = os.path.realpath(worktree.root)
    if not directory.startswith(root.rstrip(os.sep) + os.sep):
        return None
    rel = os.path.relpath(directory, root).replace(os.sep, "/")
    if rel == ".git" or rel.startswith(".git/"):
        return None
    return rel[:-2] if rel.endswith("/_") else rel


def check_hook_changes(worktree, paths, vm: str, accepted: bool) -> list:
    """The pull's `paths` in or above the hooks directory git runs; refused unless `accepted`."""
    hooks = hooks_in_worktree(worktree)
    if hooks is None:
        return []
    touched = sorted(p for p in paths if p == hooks or p.startswith(hooks + "/") or hooks.startswith(p + "/"))
    if touched and not accepted:
        raise HookChange("the VM changed %s, in the hooks directory git runs on the host (core.hooksPath %s); "
                         "nothing was written" % (", ".join(map(display, touched[:SHOWN])), display(hooks)),
                         hint="review them (`git slicer diff %s`), then pull --accept-hook-changes to take them"
                              % vm, details={"hook_changes": touched})
    return touched
