"""`git slicer worktree add/remove`: a linked worktree and its VM in one step."""

from __future__ import annotations

import os

from .errors import SlicerError, UsageError, WouldLoseWork
from .links import LinkStore
from .push import PushOptions, push
from .repo import Worktree
from .status import status


def add(current: Worktree, path: str, commitish: str = None, branch: str = None, vm: str = None,
        launch: bool = False, provider: str = None) -> dict:
    if vm and launch:
        raise UsageError("give either --vm VM or --launch, not both")
    args = ["worktree", "add", "-q"]
    if branch:
        args += ["-b", branch]
    args.append(os.path.abspath(path))
    if commitish:
        args.append(commitish)
    current.git(args)
    worktree = Worktree(path)
    result = {"worktree": worktree.root, "branch": worktree.branch(), "pushed": None}
    if vm or launch:
        try:
            result["pushed"] = push(worktree, PushOptions(vm=vm, launch=launch, provider=provider))
        except SlicerError as exc:
            raise SlicerError("created worktree %s, but the push failed: %s" % (worktree.root, exc),
                              hint="fix the cause, then run `git slicer push` there") from None
    return result


def remove(path: str, force: bool = False) -> dict:
    worktree = Worktree(path)
    unpulled = {}
    for link in LinkStore.of(worktree).all():
        try:
            report = status(worktree, link.vm)
        except SlicerError as exc:
            if not force:
                raise WouldLoseWork("cannot check VM %s for unpulled work: %s" % (link.vm, exc),
                                    hint="use --force to remove the worktree anyway") from None
            continue
        side = report["vm_side"]
        if side["head"] != report["agreed_commit"] or side["changed_since_sync"]:
            unpulled[link.vm] = {"head": side["head"], "changed": side["changed_since_sync"]}
    if unpulled and not force:
        raise WouldLoseWork("VM %s has work that was not pulled into %s" % (", ".join(sorted(unpulled)), worktree.root),
                            hint="`git slicer pull VM` there first, or remove with --force",
                            details={"unpulled": unpulled})
    main_root = worktree.worktrees()[0][0]
    if os.path.realpath(main_root) == os.path.realpath(worktree.root):
        raise UsageError("%s is the main worktree; only linked worktrees can be removed" % worktree.root)
    Worktree(main_root).git(["worktree", "remove"] + (["--force"] if force else []) + [worktree.root])
    return {"worktree": worktree.root, "removed": True, "unpulled": unpulled}
