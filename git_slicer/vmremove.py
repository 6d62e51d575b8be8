"""Removing VMs without losing work.

A VM may be linked from several worktrees of a repository (links live per worktree). Before a VM
goes, every link to it is checked: VM commits or changed files since the agreed state, or a state
that cannot be read, stop the removal unless forced. Removing a VM retires the links to it.
A VM kept with unpulled work when its worktree was removed has no link left: a record of it
among the user's own state (`keep`) stops the removal the same way, wherever `vm rm` runs.
"""

from __future__ import annotations

import json
import os
import shlex

from .agreed import pushed
from .config import user_data_dir
from .errors import NotLinked, SlicerError, StaleLink, UnprovenLink, WouldLoseWork
from .links import LinkStore, repository_links
from .repo import Worktree
from .status import status
from .wire.files import write_atomic


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
    if side.get("unpulled_branches"):
        what.append("commits on branch %s" % ", ".join(side["unpulled_branches"][:5]))
    if side.get("stash"):
        what.append("a stash, which no pull brings home (`git slicer exec %s -- git stash pop`, commit "
                    "it and pull, or drop it)" % link.vm)
    for entry in side.get("kept") or ():
        what.append("changes kept in its ref %s" % entry["ref"])
    return "; ".join(what) or None


def keep(worktree, link, why: str) -> str:
    """Record that `link`'s VM is kept with work not pulled into `worktree`, which (and with it
    the link) goes away; returns the record's path."""
    record = {"vm": link.vm, "provider": link.provider, "vm_id": link.vm_id, "worktree": worktree.root,
              "branch": link.branch, "guest_path": link.guest_path, "why": why}
    path = _kept_path(link.provider, link.vm)
    write_atomic(path, json.dumps(record).encode(), sync_dir=True)
    return path


def kept(vm) -> list:
    """[(record path, record)]: what `keep` recorded of `vm` (none for an older VM of its name)."""
    path = _kept_path(vm.provider, vm.name)
    try:
        with open(path, "rb") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict) or record.get("vm_id") and vm.id and record["vm_id"] != vm.id:
        return []
    return [(path, record)]


def _kept_path(provider: str, name: str) -> str:
    return os.path.join(user_data_dir(), "kept-vms", provider, name + ".json")


def check_removable(vm, links, records=()) -> None:
    """Refuse (WouldLoseWork) if any link to `vm` has unpulled work or cannot be checked, or a
    removed worktree left it with unpulled work (`records`, from kept())."""
    problems = []
    for worktree, link in links:
        why = unpulled_work(worktree, link)
        if why:
            problems.append("%s: %s" % (worktree.root, why))
    for _, record in records:
        problems.append("%s (a worktree removed with --force, branch %s): %s"
                        % (record.get("worktree"), record.get("branch"), record.get("why")))
    if problems:
        hint = "`git slicer pull %s` in that worktree first, or `git slicer vm rm --force %s` to delete it " \
               "anyway" % (vm.name, vm.name)
        if records and len(problems) == len(records):
            record = records[0][1]
            hint = "`git fetch %s %s` brings its commits home; `git slicer vm rm --force %s` deletes " \
                   "it with its work" % (shlex.quote("slicer://%s%s" % (vm.name, record.get("guest_path") or "")),
                                         shlex.quote(record.get("branch") or ""), vm.name)
        raise WouldLoseWork("VM %s holds work that was not pulled into %s" % (vm.name, "; ".join(problems)),
                            hint=hint, details={"vm": vm.name, "problems": problems})


def remove(provider, vm, links, records=()) -> list:
    """Remove `vm`, then retire the `links` to it and the `records` kept of it; returns the
    worktrees whose link was retired."""
    provider.remove(vm.name)
    retired = []
    for worktree, link in links:
        if LinkStore.of(worktree).remove(link.vm):
            retired.append(worktree.root)
    for path, _ in records:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return retired
