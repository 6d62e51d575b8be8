"""The host decides what leaves the host: a pull never widens the set of files a push sends.

Push leaves out what `.slicerignore` and the `.gitignore`s ignore. A VM can change those files
(committed or not) and a pull would bring the change home, so the next push (or the hook's)
would send a host secret the user never meant to share. Before a pull writes anything, every
change it brings to an ignore file is checked: the host paths that are ignored now and would
not be afterwards are named, and the pull is refused unless the user accepts them on the host
(`pull --accept-ignore-changes`).

The `.slicerignore` side is evaluated with our own matcher (the one push uses). The `.gitignore`
side is asked of git itself (`git check-ignore --no-index`) in a scratch repository that holds
the ignore files as they would be after the pull, plus the host's info/exclude and
core.excludesFile, so the answer follows git's rules exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .errors import UnsafeInput
from .ignore import IGNORE_FILE, BadIgnoreFile, SlicerIgnore, read_regular
from .repo import run_git
from .wire.gitobj import MODE_LINK
from .wire.paths import display

GITIGNORE = ".gitignore"
SHOWN = 10


class IgnoreWidening(UnsafeInput):
    """A pull would make push send host files it does not send now."""


def is_ignore_file(path: str) -> bool:
    return path == IGNORE_FILE or path.rsplit("/", 1)[-1] == GITIGNORE


def new_contents(changes) -> dict:
    """{path: bytes or None (gone, or a symlink git would not read)} for the ignore files among
    a pull's changes (objects with .path, .new (an Entry) or None, and .source: staged bytes)."""
    found = {}
    for change in changes:
        if not is_ignore_file(change.path):
            continue
        if change.new is None:
            found[change.path] = None
        elif change.new.mode == MODE_LINK:
            if change.path == IGNORE_FILE:
                raise IgnoreWidening("the VM's .slicerignore is a symlink; it is read only as a regular file; "
                                     "nothing was written",
                                     hint="make it a regular file in the VM and pull again")
            found[change.path] = None                 # git does not follow an in-tree .gitignore link
        else:
            found[change.path] = read_regular(change.source, "the VM's %s" % display(change.path))
    return found


def widened_paths(worktree, new_files: dict) -> list:
    """Existing host paths that the ignore files in `new_files` would stop ignoring."""
    if not new_files:
        return []
    old_slicer = SlicerIgnore(worktree.root)
    new_slicer = old_slicer
    exposed = set()
    if IGNORE_FILE in new_files:
        new_slicer = SlicerIgnore(data=new_files[IGNORE_FILE] or b"", shown="the VM's .slicerignore")
        for path in _ls(worktree, ["--cached", "--others"]):
            if old_slicer.ignored(path) and not new_slicer.ignored(path):
                exposed.add(path)
    dirs = sorted({os.path.dirname(p) for p in new_files if p != IGNORE_FILE})
    if dirs:
        candidates = [p for p in _ls(worktree, ["--others", "--ignored", "--exclude-standard", "--directory"])
                      if any(d == "" or p.startswith(d + "/") for d in dirs) and not new_slicer.ignored(p)]
        if candidates:
            still = _still_ignored(worktree, candidates, new_files)
            exposed.update(p for p in candidates if p not in still)
    return sorted(exposed)


def check_ignore_changes(worktree, changes, vm: str, accept: bool = False) -> list:
    """Refuse ignore files from the VM that the host could not read (symlinked `.slicerignore`,
    too big, bad pattern) and, unless `accept`, raise IgnoreWidening naming the paths if
    `changes` would widen what a push sends. Returns the paths accepted as newly exposed."""
    try:
        new_files = new_contents(changes)
        exposed = widened_paths(worktree, new_files)
    except BadIgnoreFile as exc:
        raise IgnoreWidening("VM %s: %s; nothing was written" % (vm, exc),
                             hint="fix the file in the VM and pull again") from None
    if not exposed or accept:
        return exposed
    shown = ", ".join(display(p) for p in exposed[:SHOWN])
    more = " and %d more" % (len(exposed) - SHOWN) if len(exposed) > SHOWN else ""
    raise IgnoreWidening(
        "VM %s changes %s so that push would send host files it keeps back now: %s%s; nothing was written"
        % (vm, ", ".join(display(p) for p in sorted(new_files)), shown, more),
        hint="review them (git slicer diff %s), then `git slicer pull --accept-ignore-changes %s` "
             "to take the change" % (vm, vm),
        details={"exposed": exposed})


def _ls(worktree, options) -> list:
    out = worktree.git(["ls-files", "-z", *options])
    return [os.fsdecode(p) for p in out.split(b"\0") if p]


def _still_ignored(worktree, candidates, new_files: dict) -> set:
    """Which `candidates` git would ignore with the ignore files as they would be after the pull."""
    scratch = tempfile.mkdtemp(prefix="slicer-ignore-")
    try:
        tree = os.path.join(scratch, "wt")
        run_git(["init", "-q", tree])
        try:
            exclude = read_regular(os.path.join(worktree.common_dir, "info", "exclude"), "info/exclude")
        except BadIgnoreFile:
            exclude = None
        if exclude:
            with open(os.path.join(tree, ".git", "info", "exclude"), "wb") as fh:
                fh.write(exclude)
        for directory in _ancestors(candidates):
            rel = (directory + "/" if directory else "") + GITIGNORE
            if rel in new_files:
                data = new_files[rel]
            else:
                try:
                    data = read_regular(os.path.join(worktree.root, rel), display(rel))
                except BadIgnoreFile:
                    data = None                     # git does not read it either
            if data is not None:
                os.makedirs(os.path.join(tree, directory), exist_ok=True)
                with open(os.path.join(tree, rel), "wb") as fh:
                    fh.write(data)
        args = ["check-ignore", "--no-index", "-z", "--stdin"]
        excludes = worktree.git(["config", "--type=path", "--get", "core.excludesFile"], check=False).strip()
        if excludes:
            args = ["-c", "core.excludesFile=" + os.fsdecode(excludes)] + args
        out = run_git(args, cwd=tree, input=b"".join(os.fsencode(p) + b"\0" for p in candidates), check=False)
        return {os.fsdecode(p) for p in out.split(b"\0") if p}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ancestors(paths) -> list:
    dirs = {""}
    for path in paths:
        parts = path.rstrip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)
