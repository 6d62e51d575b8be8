"""Pull: bring the VM's commits home (quarantined, fast-forward only) and its uncommitted files
(only where the host has not changed the same path since the last agreed state).

Three states meet here, each a commit plus an overlay (see wire/overlay.py):
  base  the last state both sides agreed on (from the link)
  vm    what the VM has now
  host  what the host worktree has now
For every path, the VM's version wins where only the VM changed it, the host's stays where only
the host changed it, and a path both changed differently is a conflict that stops the pull
before anything is written (or, with --force, the host's copy is saved first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from . import agreed, locks, report
from .config import Settings
from .errors import AgentFailed, NotLinked, SlicerError, UnsafeInput, WouldLoseWork
from .ignore import SlicerIgnore
from .hook_guard import check_hook_changes
from .ignore_guard import check_ignore_changes
from .links import LinkStore, not_linked
from .objects import TreeReader
from .inbound import Inbound, limits_from, ref_parent, slicer_refs
from .journal import HostWrite, Journal, recover_interrupted, set_index
from .safewrite import DIRECTORY, Change, SafeWriter
from .checkout_form import checkout_form
from .scan import InBackground, host_overlay
from .sparse import SparseCheckout
from .submodules import pull_all
from .target import resolve, vm_named
from .wire import overlay as overlay_mod
from .wire.files import utc_now
from .wire.framing import crash_point
from .wire.paths import display

@dataclass
class PullOptions:
    vm: str = None                  # None: the worktree's only linked VM
    force: bool = False
    no_files: bool = False
    no_merge: bool = False
    accept_ignore_changes: bool = False     # take VM changes to ignore files that widen what push sends
    accept_hook_changes: bool = False       # take VM changes to hooks git runs (core.hooksPath in the worktree)
    detached_ok: bool = False       # a detached HEAD moves like a branch (submodules.py)


@dataclass
class State:
    commit: str
    overlay: dict


@dataclass
class PullResult:
    """What a pull did; `to_json()` is what `git slicer pull --json` prints."""
    imported: dict                  # VM branch -> the commit now under refs/slicer/<vm>/
    from_: str                      # the host's branch before the pull ("from")
    to: str                         # and after it
    fast_forward: bool = False
    reset: bool = False             # diverged: --force reset the branch (no fast-forward)
    files: dict = field(default_factory=lambda: {"written": [], "deleted": []})
    conflicts: list = field(default_factory=list)
    backup: dict = None             # --force saved the host's state (Puller._backup)
    note: str = None                # in the JSON only when there is one
    exposed_by_ignore_changes: list = None      # in the JSON only when there are some
    vm: str = ""
    worktree: str = ""
    branch: str = ""
    submodules: list = field(default_factory=list)      # submodules.pull_all's summaries

    def to_json(self) -> dict:
        data = {"imported": self.imported, "from": self.from_, "to": self.to,
                "fast_forward": self.fast_forward, "reset": self.reset, "files": self.files,
                "conflicts": self.conflicts, "backup": self.backup, "vm": self.vm,
                "worktree": self.worktree, "branch": self.branch, "submodules": self.submodules}
        if self.note:
            data["note"] = self.note
        if self.exposed_by_ignore_changes:
            data["exposed_by_ignore_changes"] = self.exposed_by_ignore_changes
        return data


def pull(worktree, options: PullOptions, settings: Settings = None) -> PullResult:
    settings = settings or Settings.of(worktree)
    store = LinkStore.of(worktree)
    options.vm = vm_named(worktree, options.vm)
    if store.get(options.vm) is None:
        raise not_linked(worktree, options.vm)
    with locks.hold(worktree, options.vm, exclusive_worktree=True):
        result = _pull_locked(worktree, options, settings, store)
    try:
        result.submodules = pull_all(worktree, options.vm, options, pull)
    except SlicerError as exc:
        _say_what_was_pulled(exc, result)
        raise
    return result


def _say_what_was_pulled(exc: SlicerError, result: PullResult) -> None:
    """A submodule's pull failed after this repository's pull wrote its part: the error says
    so (its own "nothing was written" is about that submodule), and that pulling again finishes
    the submodules."""
    moved = result.to != result.from_
    written = len(result.files["written"]) + len(result.files["deleted"])
    if not (moved or written):
        return
    done = []
    if moved:
        done.append("%s %s %s..%s" % (result.branch or "HEAD", "reset" if result.reset else "fast-forwarded",
                                      result.from_[:12], result.to[:12]))
    if written:
        done.append("%d file(s) written" % written)
    exc.args = ("%s (the superproject's pull had already run: %s; pull again once that is "
                "resolved, for the submodules)" % (exc, ", ".join(done)),)
    exc.details = {**exc.details, "pulled_before": result.to_json()}


def _pull_locked(worktree, options: PullOptions, settings: Settings, store) -> PullResult:
    link = store.get(options.vm)
    if not agreed.pushed(link):
        raise not_linked(worktree, options.vm)
    worktree.refuse_mid_operation("a pull would move the branch under it")
    branch = worktree.branch() or ("HEAD" if options.detached_ok else None)
    if branch is None:
        raise SlicerError("HEAD is detached; check out %s to pull into it" % link.branch)
    recover_interrupted(worktree)
    crash_point("pull:recovered")
    target = resolve(settings, options.vm, worktree=worktree, require_link=True)
    link = target.link
    if link.branch and branch not in ("HEAD", link.branch):
        # The agreed state is the linked branch's: measured against another branch's checkout,
        # the switch itself would look like host edits, and the wrong branch would move.
        switch = "git switch %s" % link.branch if worktree.rev("refs/heads/" + link.branch) else \
            "`git branch -m %s` names this branch %s again (it was renamed)" % (link.branch, link.branch)
        raise SlicerError("the worktree is on branch %s, but VM %s works on %s" % (branch, options.vm, link.branch),
                          hint="%s and pull again (or push to give the VM branch %s, once its work is pulled)"
                               % (switch, branch))
    pack_limits, file_limits = limits_from(settings)
    with target.session() as session:
        link.vm_id = session.vm_id or link.vm_id
        puller = Puller(worktree, session, link, branch, options, pack_limits, file_limits)
        puller.store = store            # a push this link lost track of is settled (and saved) first
        result = puller.run()
    link.pulled_at = utc_now()
    link.last_result = "ok"
    store.save(link)
    result.vm, result.worktree, result.branch = options.vm, worktree.root, branch
    return result


class Puller:
    def __init__(self, worktree, session, link, branch, options, pack_limits, file_limits):
        self.wt = worktree
        self.session = session
        self.link = link
        self.branch = branch
        self.options = options
        self.pack_limits = pack_limits
        self.file_limits = file_limits
        self.ignore = SlicerIgnore(worktree.root)
        self.store = None
        self.inbound = Inbound(worktree, session, link, pack_limits, file_limits)

    def run(self) -> PullResult:
        """Refs under refs/slicer/<vm>/ move only when nothing the VM sent failed validation."""
        self._imported = {}
        try:
            result = self._run()
        except UnsafeInput:
            raise
        except BaseException:
            try:
                self._record_imports()
            except SlicerError as exc:         # the first failure is the one to report
                report.warn(str(exc))
            raise
        self._record_imports()
        return result

    def _record_imports(self) -> None:
        record_refs(self.wt, self.link.vm, self._imported, existing=self.inbound.refs)
        crash_point("pull:imported")

    def _run(self) -> PullResult:
        # The host's scan runs while the VM scans its own side; it is only a first look: every
        # path the VM changed is judged again after its bytes are read (_merge_with).
        with InBackground(self._scan_host) as scanning:
            return self._run_scanning(scanning)

    def _scan_host(self):
        # Without untracked files: a pull writes only paths the VM changed, and _host_after
        # scans each of those again, untracked ones included. (It shares 2 cores with the VM's
        # scan here; the untracked walk is a third of it.)
        where = {}
        overlay = host_overlay(self.wt, SlicerIgnore(self.wt.root), where=where, untracked=False)
        self.inbound.refs = slicer_refs(self.wt, self.link.vm)      # the haves for the import, meanwhile too
        return where.get("head"), overlay

    def _run_scanning(self, scanning) -> PullResult:
        vm_state = self.inbound.state(applied=agreed.pending_id(self.link), max_entries=self.file_limits.max_entries)
        agreed.settle(self.store, self.link, vm_state, self.ignore.keep)
        if not self.link.agreed_commit:          # a first push that never reached the VM
            raise NotLinked("VM %s has no state agreed with this worktree yet: its first push did not complete"
                            % self.link.vm, hint="push to it first: git slicer push %s" % self.link.vm)
        branches = self.inbound.branches(vm_state)
        vm_tip = branches.get(self.link.branch)
        if vm_tip is None:
            raise AgentFailed("VM %s no longer has branch %s" % (self.link.vm, self.link.branch))
        if vm_state["branch"] != self.link.branch:
            report.warn("the VM is on %s, not %s: its uncommitted files are not pulled (its branches are "
                        "under refs/slicer/%s/); to pull them, switch it back: git slicer exec %s -- git switch %s"
                        % ("branch " + display(str(vm_state["branch"])) if vm_state["branch"] else "a detached HEAD",
                           self.link.branch, self.link.vm, self.link.vm, self.link.branch))
        vm_view = overlay_mod.filtered(vm_state["overlay"], self.ignore.keep)
        try:
            head, self._host_scan = scanning.result()     # HEAD as the scan saw it: they belong together
        except (SlicerError, OSError) as exc:           # reported where the scan is used, as before
            head, self._host_scan = self.wt.rev("HEAD"), exc
        imported = self._import(branches, vm_view, head)

        trees = _Trees(self.wt)
        try:
            return self._merge_run(trees, head, vm_tip, vm_state, vm_view, imported)
        finally:
            trees.close()

    def _merge_run(self, trees, head, vm_tip, vm_state, vm_view, imported) -> PullResult:
        result = PullResult(imported=imported, from_=head, to=head)
        target = head
        # No VM commit since the sync: whatever the host did since (commits, an amend, a rebase)
        # is the host's history, onto which the VM's files apply as onto a newer commit.
        rewritten = vm_tip == self.link.agreed_commit and not trees.is_ancestor(vm_tip, head)
        if vm_tip != head and not self.options.no_merge:
            if trees.is_ancestor(head, vm_tip):
                target = vm_tip
            elif trees.is_ancestor(vm_tip, head):
                result.note = "the host branch is ahead of the VM's"
            elif rewritten:
                result.note = "the host rewrote its branch since the sync (amend, rebase); the VM made no commits"
            elif self.options.force:
                target = vm_tip
                result.reset = True             # diverged: --force resets the branch, it is no fast-forward
            else:
                raise WouldLoseWork(
                    "not a fast-forward: %s on the host and in VM %s have diverged; the VM's commits are in "
                    "refs/slicer/%s/%s" % (self.branch, self.link.vm, self.link.vm, self.link.branch),
                    hint="merge or rebase onto refs/slicer/%s/%s, or pull --force to take the VM's branch "
                         "(the host's is saved under refs/slicer/backup/)" % (self.link.vm, self.link.branch))
        use_vm_files = not self.options.no_files and vm_state["branch"] == self.link.branch
        base_commit, base_overlay, linked, forward = agreed.measured_from(self.link, vm_tip, head,
                                                                         trees.is_ancestor, trees.diff)
        base = State(base_commit, base_overlay)
        vm = State(vm_tip, vm_view if use_vm_files else linked)
        if target == head and vm_tip != head and not (forward and trees.is_ancestor(vm_tip, head) or rewritten):
            # The VM's files are changes to commits the host does not have (--no-merge), or the
            # VM went back behind the agreed commit (what it dropped is no work of its own).
            result.note = "; ".join(filter(None, [result.note, "files not applied: the VM is on a different commit"]))
            return result
        self._merge_with(trees, head, target, base, vm, result)
        self.link.agreed_commit = vm_tip
        self.link.agreed_overlay = vm.overlay
        return result

    # -- objects -------------------------------------------------------------------
    def _import(self, branches: dict, vm_view: dict, head: str) -> dict:
        """The VM's branch tips and staged blobs, through quarantine (inbound.py)."""
        self.inbound.import_objects(branches.values(), [e.oid for e in vm_view["index"].values()
                                                        if e is not None and e.mode != overlay_mod.MODE_GITLINK],
                                    head=head)
        self._imported = branches
        return branches

    # -- commits and files -----------------------------------------------------------
    def _merge_with(self, trees, head: str, target: str, base: State, vm: State, result: PullResult) -> None:
        writer = SafeWriter(self.wt.root, self.wt.algo, self.file_limits.max_depth)
        vm_paths = set(trees.diff(base.commit, vm.commit))
        for state in (base, vm):
            vm_paths.update(state.overlay["index"], state.overlay["files"])
        # The bytes of every path the VM changed, read BEFORE `git status` judges the host's files:
        # the writer later checks each file still has exactly these bytes, so an edit made while
        # the pull runs is never overwritten, and a file git calls clean (its bytes may differ
        # from its blob: eol, filters) is compared with itself, not with its blob.
        before = {p: writer.current(p) for p in sorted(vm_paths)
                  if trees.file(vm, p) != trees.file(base, p) or trees.index(vm, p) != trees.index(base, p)}
        ours = State(head, self._host_after(head, before))
        hidden, flagged = set(), self._flagged(before)
        for path, entry in before.items():
            if entry is None or entry == DIRECTORY:
                continue
            if trees.file(ours, path) is None or path in flagged:
                # A file git ignores, or one the index tells git not to look at (skip-worktree,
                # assume-unchanged: a local config kept out of commits): the host's own all the same.
                ours.overlay["files"][path] = entry
                hidden.add(path)
        paths = set(vm_paths)
        paths.update(ours.overlay["index"], ours.overlay["files"])
        for a, b in ((base.commit, head), (head, target)):
            paths.update(trees.diff(a, b))
        sparse = SparseCheckout.of(self.wt)

        index_updates, index_old, changes, conflicts, skip_worktree = {}, {}, [], [], []
        committed = {}          # path -> blob for files whose new bytes are a blob (checkout form applies)
        for path in sorted(paths):
            ib, iv, ih = trees.index(base, path), trees.index(vm, path), trees.index(ours, path)
            wb, wv, wh = trees.file(base, path), trees.file(vm, path), trees.file(ours, path)
            vm_index_changed, vm_file_changed = iv != ib, wv != wb
            clash = (vm_file_changed and wh != wb and wh != wv) or (vm_index_changed and ih != ib and ih != iv)
            from_blob = path not in vm.overlay["files"]
            outside = sparse is not None and from_blob and sparse.outside(path)
            if clash and not outside:
                conflicts.append(path)
                if not self.options.force:
                    continue
            it = iv if vm_index_changed or clash else ih
            wt = wv if vm_file_changed or clash else wh
            if it != ih:
                index_updates[path] = it
                index_old[path] = ih
            if outside:                 # not in the sparse cone: the index moves, the worktree does not
                if it is not None:
                    skip_worktree.append(path)
                continue
            if wt != wh and not (wt and wt.mode == overlay_mod.MODE_GITLINK) \
                    and not (wh and wh.mode == overlay_mod.MODE_GITLINK):
                expect = before[path] if path in before else writer.current(path)
                changes.append(Change(path=path, expect=expect, new=wt))
                if from_blob and wt is not None and wt.mode != overlay_mod.MODE_LINK:
                    committed[path] = wt
        result.conflicts = conflicts
        if conflicts and not self.options.force:
            # `git stash` alone leaves untracked files where they are: say -u when one is involved.
            untracked = [p for p in conflicts if trees.index(ours, p) is None and trees.file(ours, p) is not None]
            how = "git stash -u, as %s is untracked" % display(untracked[0]) if untracked else "git stash"
            if hidden.intersection(conflicts):
                first = sorted(hidden.intersection(conflicts))[0]
                how = "git stash --all, as %s is ignored" % display(first) if first not in flagged else \
                    "%s is marked skip-worktree or assume-unchanged: move your version aside" % display(first)
            hint = ("commit or stash the host's changes (%s) and pull again, or pull --force (the host's versions "
                    "are saved under refs/slicer/backup/)" % how)
            if head != base.commit and set(conflicts) & set(trees.diff(base.commit, head)):
                # The host's side is in its commits since the last sync: a stash would not help.
                hint = ("the host's commits since the last sync changed them too: commit the VM's work there "
                        "(git slicer exec %s -- sh -c 'git add -A && git commit -m MESSAGE'), pull again and merge "
                        "refs/slicer/%s/%s, "
                        "or pull --force to take the VM's versions as uncommitted changes (the host's are saved "
                        "under refs/slicer/backup/)" % (self.link.vm, self.link.vm, self.link.branch))
            raise WouldLoseWork("the VM and the host both changed: %s%s; nothing was written"
                                % (", ".join(map(display, conflicts[:10])),
                                   " and %d more" % (len(conflicts) - 10) if len(conflicts) > 10 else ""),
                                hint=hint, details={"conflicts": conflicts})
        staging = tempfile.mkdtemp(prefix="slicer-pull-%d-" % os.getpid(), dir=self.wt.git_dir)
        try:
            self.inbound.fetch_files(changes, staging, trees.reader)
            moved = set(trees.diff(head, target)).union(ours.overlay["index"])   # the index, made the commit's
            self._to_checkout_form(changes, committed, target, staging, moved)
            check_hook_changes(self.wt, [c.path for c in changes], self.link.vm, self.options.accept_hook_changes)
            exposed = check_ignore_changes(self.wt, changes, self.link.vm, self.options.accept_ignore_changes)
            if exposed:
                result.exposed_by_ignore_changes = exposed
            if self.options.force and (conflicts or result.reset):
                result.backup = self._backup(head, target, changes, result.reset, flagged)
            self._write(head, target, changes, index_updates, result, index_old, skip_worktree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _flagged(self, paths) -> set:
        """The paths whose host index entries are marked skip-worktree or assume-unchanged (git
        status then never reports their files)."""
        flagged = set()
        for batch in _batches(sorted(paths)):
            out = self.wt.git(["ls-files", "-v", "-z", "--"] + batch, env={"GIT_LITERAL_PATHSPECS": "1"})
            for line in out.split(b"\0"):
                if len(line) > 2 and (line[:1] == b"S" or line[:1].islower()):
                    flagged.add(os.fsdecode(line[2:]))
        return flagged

    def _host_after(self, head: str, before: dict) -> dict:
        """The host's overlay, where the verdict on every path in `before` (the paths the VM
        changed) is taken AFTER their bytes were read. Only those paths can be written; the
        first scan (which overlapped the VM's) stands for the others, which the pull leaves alone."""
        early = self._host_scan
        if isinstance(early, BaseException):
            raise early
        if not before:
            return early
        where = {}
        if len(before) > _RESCAN_PATHS or sum(map(len, before)) > _RESCAN_BYTES:  # command-line limits
            overlay = host_overlay(self.wt, self.ignore, where=where)
        else:
            again = host_overlay(self.wt, self.ignore, where=where, paths=sorted(before))
            overlay = {part: {p: e for p, e in early[part].items() if not _covered(p, before)} for part in early}
            for part in overlay:
                overlay[part].update(again[part])
        if where.get("head") != head:
            raise WouldLoseWork("%s moved on the host during the pull; nothing was changed" % self.branch)
        # A .slicerignore'd path never leaves the host, so the scans leave it out; but the VM's
        # commits may still change it, and the host's own edit there must count like any other.
        for paths in _batches(sorted(p for p in before if not self.ignore.keep(p))):
            mine = host_overlay(self.wt, SlicerIgnore(), paths=paths)
            for part in overlay:
                overlay[part].update(mine[part])
        return overlay

    def _to_checkout_form(self, changes, committed: dict, target: str, staging: str, moved) -> None:
        """Committed files are written as `git checkout` would write them here (line endings),
        never through a filter driver (checkout_form.py)."""
        converted = checkout_form(self.wt, target, committed, staging, tree_paths=moved)
        for change in changes:
            source = converted.get(change.path)
            if source is not None:
                change.source = source
                entry = overlay_mod.hash_worktree_file(source, self.wt.algo)
                change.written = overlay_mod.Entry(change.new.mode, entry.oid)

    def _backup(self, head: str, target: str, changes, reset: bool, flagged=frozenset()) -> dict:
        """Before --force replaces anything, keep the host's side in ONE ref: a stash-like commit
        whose tree is the worktree's tracked files, parent 1 the old branch tip, parent 2 the
        index, parent 3 the untracked files the pull replaces or deletes (and the `flagged` ones,
        skip-worktree or assume-unchanged, whose changes `git stash` does not see)."""
        wt = self.wt
        stash = wt.git(["stash", "create", "slicer pull --force"]).strip().decode()
        if stash:
            tree, index = stash + "^{tree}", wt.git(["rev-parse", stash + "^2"]).strip().decode()
        else:               # nothing uncommitted: the index and the tracked files are the old tip
            tree = head + "^{tree}"
            index = wt.git(["commit-tree", "-p", head, "-m", "index", tree]).strip().decode()
        parents = ["-p", head, "-p", index]
        held = [c.path for c in changes if c.expect is not None and c.expect != DIRECTORY]
        tracked = set()
        if held:
            tracked = {os.fsdecode(p) for p in wt.git(["ls-files", "-z", "--"] + held).split(b"\0") if p}
        untracked = [p for p in held if p not in tracked or p in flagged]
        if untracked:
            with tempfile.TemporaryDirectory(prefix="slicer-backup-", dir=wt.git_dir) as scratch:
                env = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
                wt.git(["update-index", "--add", "-z", "--stdin"], env=env,
                       input=b"".join(os.fsencode(p) + b"\0" for p in untracked))
                files = wt.git(["write-tree"], env=env).strip().decode()
            parents += ["-p", wt.git(["commit-tree", "-m", "untracked files", files]).strip().decode()]
        message = "slicer pull --force from VM %s: the host's %s before the pull" % (self.link.vm, self.branch)
        commit = wt.git(["commit-tree"] + parents + ["-m", message, tree]).strip().decode()
        stamp = utc_now(compact=True)
        for attempt in range(1, 100):
            ref = "refs/slicer/backup/%s/%s%s" % (self.branch, stamp, "" if attempt == 1 else "-%d" % attempt)
            # Create-only: two forced pulls in one second get two refs, never one overwritten.
            wt.git(["update-ref", "-m", "slicer pull --force", ref, commit, ""], check=False)
            if wt.rev(ref) == commit:
                break
        restore = "git reset -q --hard %s && git reset -q --soft %s^1 && git read-tree %s^2" % (ref, ref, ref)
        if untracked:
            restore += " && git restore -q --overlay --source=%s^3 --worktree -- :/" % ref
        return {"ref": ref, "commit": commit, "old_tip": head, "reset": reset,
                "untracked": untracked, "restore": restore}

    def _write(self, head: str, target: str, changes, index_updates: dict, result: PullResult, index_old=None,
               skip_worktree=()) -> None:
        """Move the branch (compare-and-swap), the files and the index together, under a journal:
        if the process dies part-way, the next pull or push rolls all three back."""
        ref = "HEAD" if self.branch == "HEAD" else "refs/heads/" + self.branch     # HEAD: detached
        journal = Journal(self.wt, HostWrite(ref=ref, old=head, new=target, index=index_old or {},
                                             skip=sorted(skip_worktree)))
        moved = []

        def move_ref():
            if target != head:
                try:
                    self.wt.git(["update-ref", "-m", "slicer pull: fast-forward from " + self.link.vm,
                                 ref, target, head])
                except SlicerError:
                    raise WouldLoseWork("%s moved on the host during the pull; nothing was changed"
                                        % self.branch) from None
                moved.append(True)
                crash_point("pull:ref-moved")
        writer = SafeWriter(self.wt.root, self.wt.algo, self.file_limits.max_depth)
        try:
            writer.apply(changes, journal=journal, before_commit=move_ref)
            crash_point("pull:files-written")
            if index_updates:
                set_index(self.wt, index_updates, head, skip_worktree)
            crash_point("pull:index-written")
        except BaseException:
            journal.roll_back(ref_moved=bool(moved))
            raise
        journal.finish()
        result.to = target
        result.fast_forward = bool(moved) and not result.reset
        result.files = {"written": [c.path for c in changes if c.new is not None],
                           "deleted": [c.path for c in changes if c.new is None]}


# Above these, the second look at the host is a whole scan, not one of the changed paths.
_RESCAN_PATHS, _RESCAN_BYTES = 1000, 64 * 1024


def _batches(paths: list):
    """`paths` in runs that fit one git command line."""
    batch, size = [], 0
    for path in paths:
        if batch and (len(batch) >= _RESCAN_PATHS or size + len(path) > _RESCAN_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += len(path)
    if batch:
        yield batch


def _covered(path: str, paths) -> bool:
    """Whether `path` is one of `paths` or below one of them (what a literal pathspec matches)."""
    if path in paths:
        return True
    at = path.find("/")
    while at > 0:
        if path[:at] in paths:
            return True
        at = path.find("/", at + 1)
    return False


class _Trees:
    """Cached lookups of paths in commits (one `git cat-file`), and of a state's index and file entries."""

    def __init__(self, worktree):
        self.wt = worktree
        self.reader = TreeReader(worktree)
        self._cache = {}

    def close(self) -> None:
        self.reader.close()

    def entry(self, commit: str, path: str):
        key = (commit, path)
        if key not in self._cache:
            self._cache[key] = self.reader.entry(commit, path) if commit else None
        return self._cache[key]

    def index(self, state: State, path: str):
        if path in state.overlay["index"]:
            return state.overlay["index"][path]
        return self.entry(state.commit, path)

    def file(self, state: State, path: str):
        if path in state.overlay["files"]:
            return state.overlay["files"][path]
        return self.index(state, path)

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether commit `a` is `b` or an ancestor of it. A parent of `b` (one VM commit on top
        of the host's, the everyday case) is read from `b` itself; anything else asks git, as do
        repositories whose parents are not what the commits say (shallow, grafts)."""
        if a == b:
            return True
        key = ("ancestor", a, b)
        if key not in self._cache:
            self._cache[key] = self._is_ancestor(a, b)
        return self._cache[key]

    def _is_ancestor(self, a: str, b: str) -> bool:
        if not self._plain_history():
            return self.wt.is_ancestor(a, b)
        if self._cache.get(("ancestor", b, a)):
            return False            # b descends from a, and history has no cycles (a pull asks both ways)
        found = self.reader.read(b)
        if found is not None and found[0] == "commit":
            for line in found[1].split(b"\n\n", 1)[0].split(b"\n")[1:]:
                if not line.startswith(b"parent "):
                    break
                if line[7:].decode("ascii", "replace") == a:
                    return True
        return self.wt.is_ancestor(a, b)

    def _plain_history(self) -> bool:
        if "plain" not in self._cache:
            self._cache["plain"] = not any(os.path.lexists(os.path.join(self.wt.common_dir, name))
                                           for name in ("shallow", os.path.join("info", "grafts")))
        return self._cache["plain"]

    def diff(self, a: str, b: str):
        if not a or not b or a == b:
            return []
        if ("diff", a, b) not in self._cache:          # base..vm and head..target are often the same
            self._cache[("diff", a, b)] = self.reader.changed_paths(a, b)
        return list(self._cache[("diff", a, b)])


def record_refs(worktree, vm: str, branches: dict, existing: dict = None) -> None:
    """Point refs/slicer/<vm>/<name> at the VM's tips in one transaction (`update-ref --stdin`):
    all of them move or none. Earlier refs of that VM that are in the way of a new name (`a`
    when the VM now has `a/b`, or the reverse) are stale: they are deleted first, in a
    transaction of their own (git refuses a deletion and a create of `a/b` in one). `existing`:
    those refs as the caller read them (each update is a compare-and-swap against them)."""
    if not branches:
        return
    prefix = "refs/slicer/%s/" % vm
    if existing is None:
        existing = slicer_refs(worktree, vm)
    names = {prefix + n for n in branches}
    dirs = {n[:i] for n in names for i in range(len(prefix), len(n)) if n[i] == "/"}
    stale = [b"delete %s\0%s\0" % (os.fsencode(ref), existing[ref].encode()) for ref in sorted(existing)
             if ref not in names and (ref in dirs or ref_parent(ref, names))]
    updates = [b"update %s\0%s\0%s\0" % (os.fsencode(prefix + name), oid.encode(),
                                          existing.get(prefix + name, "").encode())
               for name, oid in sorted(branches.items()) if existing.get(prefix + name) != oid]
    for commands in (stale, updates):
        if not commands:
            continue
        try:
            worktree.git(["update-ref", "-m", "slicer pull", "--stdin", "-z"], input=b"".join(commands))
        except SlicerError as exc:
            raise SlicerError("could not record VM %s's branches under %s (%s)" % (vm, prefix, exc),
                              hint="see `git for-each-ref %s`" % prefix) from None
