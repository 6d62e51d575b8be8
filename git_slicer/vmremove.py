"""Removing VMs without losing work.

A VM may be linked from several worktrees of a repository (links live per worktree). Before a VM
goes, every link to it is checked: VM commits or changed files since the agreed state, or a state
that cannot be read, stop the removal unless forced. Removing a VM retires the links to it.
"""

from __future__ import annotations

import os

from .agreed import pushed
from .errors import NotLinked, SlicerError, StaleLink, UnprovenLink, WouldLoseWork
from .links import LinkStore, repository_links
from .repo import Worktree
from .status import status


def links_to(vm, worktrees) -> list:
    """[(worktree, link)] for the links to `vm` in the repositories of `worktrees` (and of the
    worktree that launched it): same name, same provider, same identity where both know one."""
    seen, found = set(), []
    launcher = (vm.details.get("tags") or {}).get("worktree")
    candidates = list(worktrees)
    if launcher and os.path.isdir(launcher):
        try:
            candidates.append(Worktree(launcher))
        except SlicerError:
            pass
    for worktree in candidates:
        for other, link in repository_links(worktree):
            key = (os.path.realpath(other.root), link.vm)
            if key in seen or link.vm != vm.name or link.provider != vm.provider:
                continue
            if link.vm_id and vm.id and link.vm_id != vm.id:
                continue                     # a stale link to an older VM of that name
            seen.add(key)
            found.append((other, link))
    return found


def unpulled_work(worktree, link):
    """None if the VM holds nothing this link has not pulled; otherwise a short description
    (also when the VM's state cannot be read: work that cannot be seen may be there)."""
    if not pushed(link):
        return None
    try:
        report = status(worktree, link.vm, fresh=True)    # nothing from memory before a removal
    except NotLinked:
        return None             # a first push that never reached the VM: nothing of ours there
    except UnprovenLink:
        return "it cannot be checked: the link was made before VMs had ids and the VM has one of its own"
    except StaleLink:
        return None             # the VM is gone, or its name is another VM's now: nothing of ours there
    except SlicerError as exc:
        return "its state cannot be read (%s)" % exc
    side = report["vm_side"]
    if not side["exists"]:
        return None
    what = []
    if side["head"] != report["agreed_commit"]:
        what.append("commits up to %s" % (side["head"] or "none")[:12])
    if side["changed_since_sync"]:
        what.append("changed files: %s" % ", ".join(side["changed_since_sync"][:5]))
    return "; ".join(what) or None


def check_removable(vm, links) -> None:
    """Refuse (WouldLoseWork) if any link to `vm` has unpulled work or cannot be checked."""
    problems = []
    for worktree, link in links:
        why = unpulled_work(worktree, link)
        if why:
            problems.append("%s: %s" % (worktree.root, why))
    if problems:
        raise WouldLoseWork("VM %s holds work that was not pulled into %s" % (vm.name, "; ".join(problems)),
                            hint="`git slicer pull %s` in that worktree first, or `git slicer vm rm --force %s` "
                                 "to delete it anyway" % (vm.name, vm.name),
                            details={"vm": vm.name, "problems": problems})


def remove(provider, vm, links) -> list:
    """Remove `vm`, then retire the `links` to it; returns the worktrees whose link was retired."""
    provider.remove(vm.name)
    retired = []
    for worktree, link in links:
        if LinkStore.of(worktree).remove(link.vm):
            retired.append(worktree.root)
    return retired
