"""Review a VM's work without pulling it: its new commits, and its worktree as a tree to diff.

The VM's objects go through the same quarantine as pull and land under refs/slicer/<vm>/ only;
its uncommitted files are fetched, checked against their blob ids, and written as blobs into a
throwaway object directory, so nothing in the host's worktree, index or branches changes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from .agreed import measured_from
from .config import Settings
from .errors import AgentFailed, SlicerError, WouldLoseWork
from .ignore import SlicerIgnore
from .links import LinkStore
from .inbound import Inbound, limits_from
from .safewrite import Change
from .scan import host_overlay
from .target import resolve
from .vmremove import unpulled_work
from .wire import overlay as overlay_mod


@dataclass
class VMSnapshot:
    vm: str
    branch: str
    vm_tip: str          # the VM's commit on the linked branch (now in the host's object store)
    host_head: str
    base: str            # merge base of host HEAD and the VM's tip: where the VM's work starts
    tree: str            # the VM's worktree (commit + uncommitted changes) as a tree
    host_tree: str       # the host's worktree the same way (minus .slicerignore'd paths)
    env: dict            # GIT_* variables that make `tree` readable (a temporary object directory)
    pulled_tree: str     # the host's worktree as a pull would leave it (`tree` where the VM changed a path)
    agreed: str = ""     # the last commit both sides had (the host's before an amend or rebase)


@contextmanager
def snapshot(worktree, vm_name: str = None, settings: Settings = None):
    settings = settings or Settings(worktree.root)
    target = resolve(settings, vm_name, worktree=worktree, require_link=True)
    name, link = target.name, target.link
    pack_limits, file_limits = limits_from(settings)
    scratch = tempfile.mkdtemp(prefix="slicer-review-", dir=os.path.join(worktree.common_dir, "objects"))
    try:
        with target.session() as session:
            inbound = Inbound(worktree, session, link, pack_limits, file_limits)
            state = inbound.state(max_entries=file_limits.max_entries)
            branches = inbound.branches(state)
            vm_tip = branches.get(link.branch)
            if vm_tip is None:
                raise AgentFailed("VM %s no longer has branch %s" % (name, link.branch))
            ignore = SlicerIgnore(worktree.root)
            view = overlay_mod.filtered(state["overlay"], ignore.keep)
            if state["branch"] != link.branch:
                view = overlay_mod.empty()
            inbound.import_objects(branches.values(), [e.oid for e in view["index"].values()
                                                       if e is not None and e.mode != overlay_mod.MODE_GITLINK])
            changes = [Change(path=p, expect=None, new=e) for p, e in sorted(view["files"].items()) if e]
            staging = os.path.join(scratch, "staging")
            os.mkdir(staging)
            inbound.fetch_files(changes, staging)
        env = {"GIT_OBJECT_DIRECTORY": scratch,
               "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.join(worktree.common_dir, "objects"),
               "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        vm_files = {c.path: ("link", c.target) if c.new.mode == overlay_mod.MODE_LINK else ("file", c.source)
                    for c in changes}
        tree = _worktree_tree(worktree, vm_tip, view, vm_files, env)
        host_head = worktree.rev("HEAD")
        ours = host_overlay(worktree, ignore)
        host_files = {p: ("link", os.readlink(os.path.join(worktree.root, p))) if e.mode == overlay_mod.MODE_LINK
                      else ("file", os.path.join(worktree.root, p)) for p, e in ours["files"].items() if e}
        host_tree = _worktree_tree(worktree, host_head, ours, host_files, env)
        base = worktree.git(["merge-base", host_head, vm_tip], check=False).strip().decode() or host_head
        changed = _changed_by_vm(worktree, link, view if state["branch"] == link.branch else None, vm_tip, host_head)
        yield VMSnapshot(vm=name, branch=link.branch, vm_tip=vm_tip, host_head=host_head, base=base,
                         tree=tree, host_tree=host_tree, env=env,
                         pulled_tree=_with_paths_of(worktree, host_tree, tree, changed, env),
                         agreed=link.agreed_commit)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


_ABSENT = "absent"


def _changed_by_vm(worktree, link, view, vm_tip: str, host_head: str) -> set:
    """The paths a pull takes from the VM (every other path stays the host's), measured as pull
    measures them (agreed.measured_from): those the VM's commits changed since the base, and those
    whose uncommitted state (`view`; None: the VM is on another branch, whose files a pull
    leaves) differs from the base's."""
    def changed_paths(a, b):
        out = worktree.git(["diff-tree", "-r", "-z", "--no-renames", "--name-only", a, b], check=False)
        return [os.fsdecode(p) for p in out.split(b"\0") if p]
    if not link.agreed_commit:
        return set()
    base_commit, base_overlay, linked, forward = measured_from(link, vm_tip, host_head, worktree.is_ancestor,
                                                               changed_paths)
    if vm_tip != host_head and not forward and worktree.is_ancestor(vm_tip, host_head):
        return set()                    # the VM went back behind what the host has: a pull applies nothing
    view = linked if view is None else view
    paths = set(changed_paths(base_commit, vm_tip)) if base_commit != vm_tip else set()
    for part in ("index", "files"):
        paths.update(p for p in set(base_overlay[part]) | set(view[part])
                     if base_overlay[part].get(p, _ABSENT) != view[part].get(p, _ABSENT))
    return paths


def _with_paths_of(worktree, host_tree: str, vm_tree: str, paths: set, env: dict) -> str:
    """`host_tree` with each of `paths` as `vm_tree` has it (or without it)."""
    if not paths:
        return host_tree
    index_env = {**env, "GIT_INDEX_FILE": env["GIT_INDEX_FILE"] + "-pulled"}
    worktree.git(["read-tree", host_tree], env=index_env)
    theirs = {}
    for line in worktree.git(["ls-tree", "-r", "-z", vm_tree], env=env).split(b"\0"):
        if line:
            meta, path = line.split(b"\t", 1)
            theirs[os.fsdecode(path)] = meta.split(b" ")
    zero = "0" * len(host_tree)
    lines = ["0 %s\t%s" % (zero, p) for p in sorted(paths)]           # removals first: a file may become a directory
    lines += ["%s %s\t%s" % (theirs[p][0].decode(), theirs[p][2].decode(), p) for p in sorted(paths) if p in theirs]
    worktree.git(["update-index", "-z", "--index-info"],
                 input=b"".join(os.fsencode(line) + b"\0" for line in lines), env=index_env)
    return worktree.git(["write-tree"], env=index_env).decode().strip()


def _worktree_tree(worktree, commit: str, view: dict, files: dict, env: dict) -> str:
    """A tree of a worktree state: `commit`, then the overlay `view`. `files` maps each overlay
    file to ("link", target) or ("file", path of its bytes); blobs go to the scratch object dir."""
    worktree.git(["read-tree", commit], env={**env, "GIT_INDEX_FILE": env["GIT_INDEX_FILE"] + commit[:8]})
    index_env = {**env, "GIT_INDEX_FILE": env["GIT_INDEX_FILE"] + commit[:8]}
    lines = []
    zero = "0" * len(commit)
    for path, entry in sorted(view["index"].items()):
        if path not in view["files"]:
            lines.append("%s %s\t%s" % ((entry.mode, entry.oid, path) if entry else ("0", zero, path)))
    for path, entry in sorted(view["files"].items()):
        if entry is None:
            lines.append("0 %s\t%s" % (zero, path))
            continue
        kind, source = files[path]
        if kind == "link":
            oid = worktree.git(["hash-object", "-w", "--stdin"], input=os.fsencode(source), env=env)
        else:
            oid = worktree.git(["hash-object", "-w", "--no-filters", "--", source], env=env)
        lines.append("%s %s\t%s" % (entry.mode, oid.decode().strip(), path))
    if lines:
        worktree.git(["update-index", "-z", "--index-info"],
                     input=b"".join(os.fsencode(line) + b"\0" for line in lines), env=index_env)
    return worktree.git(["write-tree"], env=index_env).decode().strip()


def diff(worktree, vm_name: str = None, stat: bool = False, as_json: bool = False) -> dict:
    """What pulling would change in the host's worktree: its paths the VM changed since the last
    agreed state (commits and files), as the VM has them. (Where the host changed the same
    path too, the pull refuses without --force; the diff shows the VM's side.)"""
    with snapshot(worktree, vm_name) as snap:
        args = ["diff", "--no-ext-diff", "--no-textconv", "--numstat" if as_json else ("--stat" if stat else "-p"),
                snap.host_tree, snap.pulled_tree]
        out = worktree.git(args, env=snap.env)
        result = {"vm": snap.vm, "branch": snap.branch, "base": snap.base, "vm_head": snap.vm_tip,
                  "tree": snap.tree}
        if as_json:
            files = []
            for line in out.decode("utf-8", "surrogateescape").splitlines():
                added, deleted, path = line.split("\t", 2)
                files.append({"path": path, "added": None if added == "-" else int(added),
                              "deleted": None if deleted == "-" else int(deleted)})
            result["files"] = files
        else:
            result["text"] = out.decode("utf-8", "replace")
        return result


def log(worktree, vm_name: str = None) -> dict:
    """The VM's commits that the host branch does not have."""
    with snapshot(worktree, vm_name) as snap:
        known = ["^" + snap.agreed] if snap.agreed and worktree.rev(snap.agreed) else []  # a rewritten host commit
        out = worktree.git(["log", "--no-show-signature", "-z", "--format=%H%x00%an%x00%aI%x00%s",
                            "%s..%s" % (snap.host_head, snap.vm_tip)] + known)
        fields = out.decode("utf-8", "replace").split("\0")
        commits = []
        for i in range(0, len(fields) - 3, 4):
            commits.append({"commit": fields[i].strip(), "author": fields[i + 1], "date": fields[i + 2],
                            "subject": fields[i + 3]})
        return {"vm": snap.vm, "branch": snap.branch, "vm_head": snap.vm_tip, "host_head": snap.host_head,
                "commits": commits}


def unlink(worktree, vm_name: str, force: bool = False) -> bool:
    """Forget the worktree's link to a VM (False if there is none). The link is what stops `vm rm`
    deleting work that was not pulled, so it stays while there is any, unless `force`."""
    store = LinkStore.of(worktree)
    try:
        link = store.get(vm_name)
    except SlicerError:                 # a corrupt link file: it holds no state to check against
        return store.remove(vm_name)
    if link is None:
        return False
    why = None if force else unpulled_work(worktree, link)
    if why:
        raise WouldLoseWork("VM %s holds work that was not pulled (%s); without the link nothing would stop "
                            "`git slicer vm rm` deleting it" % (vm_name, why),
                            hint="`git slicer pull %s` first, or unlink --force" % vm_name,
                            details={"vm": vm_name, "unpulled": why})
    return store.remove(vm_name)
