"""Submodules travel as repositories of their own.

The host's initialized submodules (gitlinks in the host's index whose directory holds a checkout;
never anything the VM's .gitmodules names) are pushed, recursively, into the VM at
`<guest path>/<submodule path>`, each at its checked-out commit with its uncommitted changes, by
the same push as any worktree, under a link of its own in the submodule's git directory. A
submodule whose HEAD is detached (the usual case) gets a branch in the VM, `DETACHED_BRANCH`,
so the VM's commits there have a name. A pull pulls each of them after the parent: their commits
come home through the same quarantine under the submodule's `refs/slicer/<vm>/`, and a detached
HEAD is fast-forwarded (by compare-and-swap) like a branch.
"""

from __future__ import annotations

import os
from dataclasses import replace

from .errors import SlicerError
from .links import Link, LinkStore
from .repo import Worktree
from .wire.gitobj import MODE_GITLINK
from .wire.paths import display

DETACHED_BRANCH = "slicer-detached"


def initialized(worktree) -> list:
    """[(path, Worktree)] of the host's initialized submodules (gitlinks with a checkout)."""
    if not os.path.lexists(os.path.join(worktree.root, ".gitmodules")):
        return []                   # no submodules: spare every push a listing of the index
    out = worktree.git(["ls-files", "-s", "-z"])
    found = []
    for record in out.split(b"\0"):
        if not record.startswith(MODE_GITLINK.encode() + b" "):
            continue
        path = os.fsdecode(record.split(b"\t", 1)[1])
        full = os.path.join(worktree.root, path)
        if os.path.islink(full) or not os.path.lexists(os.path.join(full, ".git")):
            continue
        try:
            sub = Worktree(full)
        except SlicerError:
            continue
        if os.path.realpath(sub.root) == os.path.realpath(full):
            found.append((path, sub))
    return found


def push_all(worktree, parent: Link, guest_path: str, options, push) -> list:
    """Push every initialized submodule into the VM below `guest_path` with `push` (push.push);
    one result each."""
    results = []
    for path, sub in initialized(worktree):
        store = LinkStore.of(sub)
        link = store.get(parent.vm)
        where = guest_path.rstrip("/") + "/" + path
        if link is None or link.vm_id != parent.vm_id or link.guest_path != where:
            store.save(Link(vm=parent.vm, provider=parent.provider, address=parent.address, guest_path=where,
                            branch=sub.branch() or DETACHED_BRANCH, vm_id=parent.vm_id))
        try:
            result = push(sub, replace(options, vm=parent.vm, launch=False, detached_branch=DETACHED_BRANCH))
        except SlicerError as exc:
            exc.args = ("submodule %s: %s" % (display(path), exc),)
            raise
        results.append({"path": path, "commit": result.commit, "up_to_date": result.up_to_date,
                        "submodules": result.submodules})
    return results


def pull_all(worktree, vm: str, options, pull) -> list:
    """Pull every initialized submodule this VM has (after the parent) with `pull` (pull.pull)."""
    results = []
    for path, sub in initialized(worktree):
        if LinkStore.of(sub).get(vm) is None:
            continue
        try:
            result = pull(sub, replace(options, vm=vm, detached_ok=True))
        except SlicerError as exc:
            exc.args = ("submodule %s: %s" % (display(path), exc),)
            raise
        results.append({"path": path, "from": result.from_, "to": result.to, "fast_forward": result.fast_forward,
                        "imported": result.imported, "files": result.files, "submodules": result.submodules})
    return results
