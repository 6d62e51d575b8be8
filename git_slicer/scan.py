"""What the host worktree holds beyond its HEAD commit, filtered by `.slicerignore`."""

from __future__ import annotations

import os
import threading

from .errors import SlicerError
from .ignore import SlicerIgnore
from .wire import overlay as overlay_mod
from .wire.paths import display


class InBackground:
    """`fn(*args)` on a thread while the caller talks to the VM (the host scan overlaps the
    agent's); `result()` returns what it returned or raises what it raised. Leaving the block
    waits for it, so no scan outlives the command. (Not concurrent.futures: its imports cost
    more than a no-op push's whole host side.)"""

    def __init__(self, fn, *args):
        self._outcome = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)

    def _run(self, fn, args) -> None:
        try:
            self._outcome = (True, fn(*args))
        except BaseException as exc:            # handed to result() in the caller's thread
            self._outcome = (False, exc)

    def __enter__(self) -> "InBackground":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()

    def result(self):
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def host_overlay(worktree, ignore: SlicerIgnore = None, refresh_index: bool = False, where: dict = None,
                 paths=None, later=None, untracked: bool = True) -> dict:
    """The worktree's overlay (see wire/overlay.py) minus `.slicerignore`d paths.

    `refresh_index=True` lets git save refreshed stat data in the index, as `git status` does
    (push: much faster next time), and saves our stat cache of dirty and untracked files' blob
    ids; pull and status leave the repository byte-for-byte alone (they only read the cache).
    Background runs set GIT_OPTIONAL_LOCKS=0, so they never hold index.lock against the user.
    With `where` (a dict), HEAD's commit and branch are read by the same `git status` call
    ("head", "branch"), so they always belong to the overlay. With `paths`, only those paths
    (taken literally, with everything below them) are scanned. With `later` (a push's
    laterids.LaterIds), large files get placeholder ids, hashed on a thread. `untracked=False`
    leaves untracked files out."""
    ignore = ignore or SlicerIgnore(worktree.root)
    cache_path = os.path.join(worktree.git_dir, "slicer", "statcache.json")
    cache = overlay_mod.StatCache.load(cache_path)
    if later is not None:
        later.attach(cache, cache_path)
    run_git = worktree.git if paths is None else \
        (lambda args: worktree.git(args, env={"GIT_LITERAL_PATHSPECS": "1"}))
    for attempt in range(3):
        try:
            raw = overlay_mod.scan(worktree.root, run_git, worktree.algo, refresh_index=refresh_index,
                                   cache=cache, branch=where, paths=paths,
                                   hash_file=later.entry if later is not None else None, untracked=untracked)
            break
        except overlay_mod.UnmergedPaths as exc:
            raise SlicerError("the worktree has unmerged paths: %s" % ", ".join(map(display, exc.paths[:5])),
                              hint="resolve the merge first") from None
        except overlay_mod.FileChanged:
            if attempt == 2:
                raise SlicerError("files keep changing while they are scanned; try again") from None
    if refresh_index and os.path.isdir(os.path.dirname(cache_path)):
        try:
            cache.dump(cache_path)
        except OSError:
            pass                          # only a cache: the next scan hashes again
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


class KnownPaths:
    """The paths the host already has (its index and the last agreed overlay): the only names
    with control characters (tab, newline, ...) a VM may send back (see wire/paths.py). Read
    from the index only when such a name actually arrives."""

    def __init__(self, worktree, *overlays):
        self.wt = worktree
        self.overlays = [o for o in overlays if o]
        self._paths = None

    def __bool__(self) -> bool:
        return True

    def __contains__(self, path) -> bool:
        if self._paths is None:
            listed = self.wt.git(["ls-files", "-z"]).split(b"\0")
            files = {os.fsdecode(p) for p in listed if p}
            for overlay in self.overlays:
                files.update(overlay["index"], overlay["files"])
            self._paths = set(files)
            for name in files:                  # and the directories they are in
                while "/" in name:
                    name = name.rsplit("/", 1)[0]
                    self._paths.add(name)
        return path in self._paths
