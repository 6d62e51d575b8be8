"""`git slicer worktree add/remove`: a linked worktree and its VM in one step."""

from __future__ import annotations

import os
import shlex

from . import vmremove
from .config import Settings
from .errors import SlicerError, UsageError, WouldLoseWork
from .links import LinkStore
from .push import PushOptions, push
from .repo import Worktree
from .target import resolve


def add(current: Worktree, path: str, commitish: str = None, branch: str = None, vm: str = None,
        launch: bool = False, provider: str = None) -> dict:
    if vm and launch:
        raise UsageError("give either --vm VM or --launch, not both")
    if vm:      # a VM that is not there stops the command before it creates anything
        resolve(Settings(current.root), vm, provider=provider)      # (the new worktree's link is new)
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
            result["pushed"] = push(worktree, PushOptions(vm=vm, launch=launch, provider=provider)).to_json()
        except SlicerError as exc:
            raise SlicerError("created worktree %s, but the push failed: %s" % (worktree.root, exc),
                              hint="fix the cause, then `git -C %s slicer push %s`"
                                   % (shlex.quote(worktree.root), vm or "--launch")) from None
    return result


def remove(path: str, force: bool = False, keep_vms: bool = False) -> dict:
    """Remove a linked worktree and the VMs it launched. Refuses while a linked VM holds work
    that was not pulled (or cannot be checked), unless `force`; a VM with such work is kept
    even then, as is every VM the worktree did not launch, and all of them with `keep_vms`."""
    worktree = Worktree(path)
    main_root = worktree.worktrees()[0][0]
    if os.path.realpath(main_root) == os.path.realpath(worktree.root):
        raise UsageError("%s is the main worktree; only linked worktrees can be removed" % worktree.root)
    links = LinkStore.of(worktree).all()
    unpulled = {link.vm: why for link in links for why in [vmremove.unpulled_work(worktree, link)] if why}
    if unpulled and not force:
        raise WouldLoseWork("VM %s has work that was not pulled into %s: %s" % (
            ", ".join(sorted(unpulled)), worktree.root, "; ".join(unpulled[n] for n in sorted(unpulled))),
                            hint="%s first, or remove with --force (the VM and its work are kept)"
                                 % " and ".join("`git -C %s slicer pull %s`" % (shlex.quote(worktree.root), n) for n in sorted(unpulled)),
                            details={"unpulled": unpulled})
    settings = Settings(worktree.root)
    vms, doomed = [], []
    for link in links:
        reason = _keep_reason(link, unpulled, keep_vms)
        if reason is None:
            try:
                target = resolve(settings, link.vm, worktree=worktree)
                provider, vm = target.provider, target.vm
                others = [(w, l) for w, l in vmremove.links_to(vm, [worktree])
                          if os.path.realpath(w.root) != os.path.realpath(worktree.root)]
                vmremove.check_removable(vm, others)
                doomed.append((provider, vm, others))
            except SlicerError as exc:
                reason = "kept: %s" % exc
        vms.append({"vm": link.vm, "removed": reason is None, "reason": reason or "launched by this worktree"})
    records = [vmremove.keep(worktree, link, unpulled[link.vm])   # its link goes with the worktree
               for link in links if link.vm in unpulled]
    try:
        Worktree(main_root).git(["worktree", "remove"] + (["--force"] if force else []) + [worktree.root])
    except BaseException:
        for path in records:             # the worktree, and its link, are still there
            os.unlink(path)
        raise
    for provider, vm, others in doomed:
        vmremove.remove(provider, vm, others)
    return {"worktree": worktree.root, "removed": True, "unpulled": unpulled, "vms": vms}


def _keep_reason(link, unpulled: dict, keep_vms: bool):
    if keep_vms:
        return "kept: --keep-vms"
    if not link.launched:
        return "kept: not launched by this worktree"
    if link.vm in unpulled:
        return "kept: it holds work that was not pulled"
    return None
