"""Push: give the VM the worktree's branch, history and uncommitted state, sending only what
it lacks since the last agreed state."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

from . import agreed, locks, report
from .config import Settings
from .errors import AgentFailed, SlicerError, UsageError, WouldLoseWork
from .ignore import SlicerIgnore, host_attributes, host_excludes
from .links import Link, LinkStore, encoded, repository_links
from .journal import recover_interrupted
from .laterids import LaterIds
from .scan import InBackground, KnownPaths, host_overlay, ignored_files
from .submodules import push_all
from .session import open_session
from .target import default_guest_path, launch_vm, provider_for, resolve, vm_named
from .wire import overlay as overlay_mod
from .wire import tarstream
from .wire.files import utc_now
from .wire.framing import ProtocolError, StreamAborted, crash_point
from .wire.paths import UnsafePath, check_relpath, display


@dataclass
class PushOptions:
    vm: str = None
    launch: bool = False
    force: bool = False
    depth: int = None
    include_ignored: bool = None
    provider: str = None
    tags: dict = None           # --tag KEY=VALUE for a launched VM
    hostgroup: str = None       # --hostgroup (Slicer)
    allow: tuple = ()           # with launch: the new VM's egress allowlist
    detached_branch: str = None     # a detached HEAD is pushed as this branch (submodules.py)


@dataclass
class PushResult:
    """What a push did; `to_json()` is what `git slicer push --json` prints."""
    vm: str
    provider: str
    worktree: str
    branch: str
    commit: str                     # the host's HEAD, now the VM's
    launched: bool                  # the VM was launched for this push
    guest_path: str
    up_to_date: bool                # nothing needed sending
    sent: dict                      # {"pack_bytes", "files", "file_bytes"}
    first_push: bool = None         # the VM had no repository (in the JSON when something was sent)
    submodules: list = field(default_factory=list)      # submodules.push_all's summaries

    def to_json(self) -> dict:
        data = {"vm": self.vm, "provider": self.provider, "worktree": self.worktree, "branch": self.branch,
                "commit": self.commit, "launched": self.launched, "guest_path": self.guest_path,
                "up_to_date": self.up_to_date, "sent": self.sent, "submodules": self.submodules}
        if not self.up_to_date:
            data["first_push"] = self.first_push
        return data


def push(worktree, options: PushOptions, settings: Settings = None) -> PushResult:
    settings = settings or Settings.of(worktree)      # one `git config --list` serves the whole push
    if options.depth is not None and options.depth < 1:
        raise UsageError("--depth must be at least 1")
    worktree.refuse_mid_operation("the VM would get its files without it")
    store = LinkStore.of(worktree)
    if options.launch:
        # Checked before a VM is made for nothing; a plain push learns both from its scan.
        branch = worktree.branch() or options.detached_branch
        _check_head(branch, worktree.rev("HEAD"))
        result = _launch_and_push(worktree, settings, store, branch, options)
    else:
        name = vm_named(worktree, options.vm)
        # HEAD, the branch and the overlay are read again under the lock (a pull or a commit may
        # move them meanwhile): a push sends the state of the moment it holds the lock.
        with locks.hold(worktree, name):
            recover_interrupted(worktree)
            # The link is read under the lock: another push may have just saved it.
            target = resolve(settings, name, worktree=worktree, provider=options.provider)
            result = _push_locked(worktree, settings, store, target.provider, target.vm, target.link, None,
                                  options, False)
    result.submodules = push_all(worktree, store.get(result.vm), result.guest_path, options, push)
    return result


def _check_head(branch, head) -> None:
    if branch is None:
        raise SlicerError("HEAD is detached; check out a branch to push", hint="git switch -c NAME")
    if head is None:
        raise SlicerError("branch %s has no commits yet; commit something first" % branch)


def _launch_and_push(worktree, settings, store, branch, options) -> PushResult:
    """Launch a VM and push to it. If the push fails while the VM cannot hold any of it (no link
    is left, not even a pending one), the new VM is removed again (no orphan VMs); once it may
    hold the push, VM and pending link stay for the next push to settle. A name this worktree
    already links is never reused."""
    taken = {link.vm for _, link in repository_links(worktree)}
    link = store.get(options.vm) if options.vm else None
    if link is not None:
        raise UsageError("this worktree is already linked to a VM named %s (provider %s); VM names are "
                         "one namespace, so a new VM needs another name" % (options.vm, link.provider),
                         hint="git slicer push --launch OTHER-NAME, or `git slicer vm rm %s` first" % options.vm)
    provider = provider_for(settings, override=options.provider)
    tags = dict(options.tags or {})
    tags.update({"repo": worktree.name, "branch": branch, "worktree": worktree.root})
    vm = launch_vm(provider, options.vm, tags, options.hostgroup, allow=options.allow, avoid=taken)
    if store.get(vm.name) is not None:           # a provider that names VMs itself chose a linked name
        _discard(provider, vm)
        raise UsageError("the new VM is called %s, a name this worktree already links" % vm.name)
    try:
        with locks.hold(worktree, vm.name):
            recover_interrupted(worktree)
            return _push_locked(worktree, settings, store, provider, vm, None, branch, options, True)
    except BaseException:
        # The link is saved (pending) before the VM sees anything, and removed again while the
        # push cannot have reached it: a linked VM may hold the push, so it stays, to be settled
        # by the next push; an unlinked one holds nothing and nobody would find it again.
        if store.get(vm.name) is None:
            _discard(provider, vm)
        else:
            report.warn("kept new VM %s: it may hold this push; `git slicer push %s` completes it, "
                        "`git slicer vm rm %s` removes it" % (vm.name, vm.name, vm.name))
        raise


def _discard(provider, vm) -> None:
    try:
        provider.remove(vm.name)
        report.warn("removed new VM %s again" % vm.name)
    except (SlicerError, OSError) as exc:
        report.warn("the push into new VM %s failed and removing it failed too: %s" % (vm.name, exc))


def _push_locked(worktree, settings, store, provider, vm, link, branch, options, launched) -> PushResult:
    created = link is None
    if created:
        link = Link(vm=vm.name, provider=provider.name, address=vm.address,
                    guest_path=default_guest_path(settings, worktree, vm.name), branch=branch,
                    launched=launched)
    include_ignored = options.include_ignored
    if include_ignored is None:
        include_ignored = settings.get("slicer.includeIgnored")

    record = None if created else encoded(link)      # as saved: a push that changes nothing keeps it
    ignore = SlicerIgnore(worktree.root)
    attempt = agreed.Attempt()
    later = LaterIds(worktree.algo, ignore.keep)
    # Scan the host worktree while the agent starts (a sandbox or VM takes tens of ms to answer).
    try:
        with InBackground(_host_state, worktree, ignore, options.detached_branch, later) as scanning:
            with open_session(provider, vm, settings, None if created else link.vm_id) as session:
                link.vm_id = session.vm_id or link.vm_id
                outcome = _push(worktree, session, store, link, options, include_ignored, ignore, scanning,
                                attempt, later)
    except BaseException:
        agreed.abandon(store, link, attempt, created)
        raise
    finally:
        later.stop()
    head, branch = outcome.pop("head"), outcome.pop("branch")
    crash_point("push:before-link")
    link.branch = branch
    link.address = vm.address
    link.last_result = "ok"
    # `pushed_at` is when a push last changed something: an up-to-date push that found the
    # record as saved leaves it alone (no fsync'd write for an agent's no-op push in a loop).
    if not (outcome["up_to_date"] and encoded(link) == record and attempt.push_id is None):
        link.pushed_at = utc_now()
        store.save(link)
    return PushResult(vm=vm.name, provider=provider.name, worktree=worktree.root, branch=branch, commit=head,
                      launched=launched, guest_path=link.guest_path, **outcome)


def _host_state(worktree, ignore: SlicerIgnore, detached_branch: str = None, later=None):
    """(HEAD, branch, overlay) from one `git status`, so the three always belong together (large
    files' ids may be left to `later`)."""
    where = {}
    ours = host_overlay(worktree, ignore, True, where=where, later=later)
    where["branch"] = where.get("branch") or detached_branch
    _check_head(where.get("branch"), where.get("head"))
    return where["head"], where["branch"], ours


def _push(worktree, session, store, link: Link, options: PushOptions, include_ignored: bool,
          ignore: SlicerIgnore, scanning, attempt: agreed.Attempt, later: LaterIds):
    # The VM is read once, under its agent's lock, which it keeps until we push or cancel.
    vm_state = session.push_begin(link.guest_path, applied=agreed.pending_id(link),
                                  known=KnownPaths(worktree, link.agreed_overlay))
    try:
        return _push_from(worktree, session, store, link, options, include_ignored, ignore, scanning, attempt,
                          vm_state, later)
    finally:
        session.end_push_begin()       # nothing to send, or refused: the VM's lock is released


def _push_from(worktree, session, store, link: Link, options: PushOptions, include_ignored: bool,
               ignore: SlicerIgnore, scanning, attempt: agreed.Attempt, vm_state: dict, later: LaterIds):
    agreed.settle(store, link, vm_state, ignore.keep)     # a push this link lost track of
    _begin_while_scanning(worktree, store, link, vm_state, attempt)
    head, branch, ours = scanning.result()
    pending = later.pending(ours)
    if pending and (not session.supports("later-ids") or _vm_may_hold(pending, vm_state, link)):
        ours, pending = later.resolved(ours), []      # what the VM holds is compared by id
    vm_view = overlay_mod.filtered(vm_state["overlay"], ignore.keep)
    # A repository with no commit and nothing in it (a first push killed before it applied)
    # holds nothing to lose.
    first = not vm_state["exists"] or (vm_state["head"] is None and not vm_state["branches"]
                                       and not vm_state["overlay"]["index"] and not vm_state["overlay"]["files"])
    done = {"head": head, "branch": branch}
    if not first and vm_state.get("object_format") not in (None, worktree.algo):
        raise SlicerError("VM %s has a %s repository at %s, this one uses %s objects"
                          % (link.vm, display(str(vm_state["object_format"])), display(str(vm_state["path"])),
                             worktree.algo), hint="push to another VM, or set slicer.%s.guestPath" % link.vm)

    if not first and not options.force:
        _refuse_if_vm_has_work(link, vm_state, vm_view, head, ours, worktree)
    extra = ignored_files(worktree, ignore) if include_ignored else []
    if (not first and vm_state["head"] == head and vm_state["branch"] == branch and vm_view == ours
            and not extra and options.depth is None):
        link.guest_path = vm_state.get("path") or link.guest_path     # (a first push finished by recovery)
        agreed.confirm(link, vm_state, ignore.keep)
        return {"up_to_date": True, "sent": {"pack_bytes": 0, "files": 0, "file_bytes": 0}, **done}

    index_blobs = sorted({e.oid for e in ours["index"].values()
                          if e is not None and e.mode != overlay_mod.MODE_GITLINK})
    need_pack = first or vm_state["head"] != head or bool(index_blobs) or head not in vm_state["branches"].values()
    known = [c for c in {vm_state["head"], link.agreed_commit, *vm_state["branches"].values()} if c]
    haves = _host_has(worktree, known) if need_pack and not first else []     # (a git process)
    reuse = sorted(p for p, e in ours["files"].items()
                   if e is not None and vm_state["overlay"]["files"].get(p) == e)
    send = {p: e for p, e in ours["files"].items() if e is not None and p not in reuse}
    shallow, within = [], []
    cut = _host_shallow(worktree)        # a shallow clone's history stops there, and the VM's must too
    if first and options.depth:
        within, shallow = _shallow_history(worktree, head, options.depth)
        shallow = sorted(set(shallow) | (cut & set(within)))
    elif cut and need_pack:
        shallow = sorted(cut)

    for path in list(send) + list(extra):
        try:
            check_relpath(path, control_ok=True)     # what the agent takes from a file stream
        except UnsafePath as exc:
            raise SlicerError("cannot send %s uncommitted: %s" % (display(path), exc),
                              hint="commit it: a commit carries any path git can") from None
    link.branch = link.branch or branch                  # a new link learns it from the scan
    push_id = attempt.push_id
    if push_id is None or link.pending != {"id": push_id, "commit": head, "branch": branch}:
        push_id = agreed.begin(store, link, head, branch, attempt)     # saved before the VM sees anything
    tar = bool(send or extra)
    attempt.delivered = not (need_pack or tar)         # with no stream, the request is the whole push
    session.push(link.guest_path, push_id=push_id, branch=branch, commit=head, object_format=worktree.algo,
                 overlay=ours, reuse=reuse, extra=extra, pack=need_pack, tar=tar, shallow=shallow,
                 expect=({"head": vm_state["head"], "overlay": vm_state["overlay"]}
                         if vm_state["exists"] and not vm_state.get("begun") else None),
                 config=_identity(worktree), remotes=_safe_remotes(worktree),
                 excludes=host_excludes(worktree), attributes=host_attributes(worktree),
                 checkout={key: worktree.config(key) for key in overlay_mod.CHECKOUT_KEYS},
                 pending=pending)  # "ready", or a refusal
    sent = {"pack_bytes": 0, "files": len(send) + len(extra), "file_bytes": 0}
    try:
        # From the start of the last stream on, the VM may end up with the push (whatever
        # breaks then, it may have got every byte), unless we abandon the stream ourselves.
        if need_pack:
            attempt.delivered = not tar
            sent["pack_bytes"] = _send_pack(worktree, session, head, haves, index_blobs, within)
            crash_point("push:pack-sent")
        if tar:
            attempt.delivered = True
            before = session.conn.bytes_out
            session.conn.send_stream(tarstream.file_stream(worktree.root, send, worktree.algo, extra,
                                                           receiver_checks=True))
            sent["file_bytes"] = session.conn.bytes_out - before
            crash_point("push:files-sent")
        if pending:
            try:
                ids = later.wait(pending)
            except SlicerError:
                attempt.delivered = False       # the agent drops a push whose ids never came
                session.abandon_push("a file changed while it was being sent")
                raise
            session.send_ids(ids)
            ours = {"index": ours["index"], "files": {**ours["files"], **ids}}
            send = {p: ours["files"][p] for p in send}
    except StreamAborted as exc:
        attempt.delivered = False       # the agent drops an abandoned stream: nothing of it applies
        session.reply()  # the agent reports the abort; surface our own reason instead
        raise SlicerError(str(exc)) from None
    except (BrokenPipeError, ConnectionError, ProtocolError):
        session.reply()  # the agent stopped reading: its error explains why
        raise
    try:
        reply = session.pushed(known=KnownPaths(worktree, link.agreed_overlay, ours))
    except AgentFailed as exc:
        if exc.code == "corrupt":       # the agent's check: bytes that are not what the scan announced
            attempt.delivered = False   # refused before anything was journaled: nothing of it applies
            _name_changed_file(worktree, send)
        raise
    report.info("sent a %d-byte pack and %d file(s) (%d bytes, %d already in the VM)"
                % (sent["pack_bytes"], sent["files"], sent["file_bytes"], len(reuse)))
    after = overlay_mod.filtered(reply["overlay"], ignore.keep)
    link.guest_path = reply.get("path") or link.guest_path
    agreed.confirm(link, reply, ignore.keep)              # what the VM has, not what we meant
    if reply.get("head") != head or after != ours:
        diff = overlay_mod.changed_paths(ours, after)
        report.warn("the VM's status differs from the host's after the push: %s"
                    % ", ".join(map(display, diff[:10])))
    edited = _changed_meanwhile(reply)
    if edited:
        report.warn("the VM changed %s while the push was applied: that is the VM's change now "
                    "(`git slicer status %s`)" % (", ".join(map(display, edited[:10])), link.vm))
    return {"up_to_date": False, "first_push": first, "sent": sent, **done}


def _begin_while_scanning(worktree, store, link: Link, vm_state: dict, attempt: agreed.Attempt) -> None:
    """Save the push's pending record while the host's scan runs, when the VM's HEAD is not the
    host's (the push will send something). Saved after the scan, its fsync waited ~10 ms for the
    6 MB index `git status` had just rewritten (ext4 writes a file renamed over another out with
    the next journal commit). A first push saves its new link after the scan, as before."""
    if not link.agreed_commit:
        return
    branch = worktree.branch()
    head = _loose_ref(worktree, "refs/heads/" + branch) if branch else None
    if head and head != vm_state.get("head"):
        agreed.begin(store, link, head, branch, attempt)
        crash_point("push:pending-saved")       # an id the VM never sees: the next command drops it


def _loose_ref(worktree, ref: str):
    """The commit a loose ref file holds, or None (packed, another ref backend, unreadable):
    read without a git process, for a guess only (a no-op push must not pay for a process)."""
    try:
        with open(os.path.join(worktree.common_dir, ref), "rb") as fh:
            text = fh.read(100).strip()
    except OSError:
        return None
    return text.decode("ascii") if re.fullmatch(rb"[0-9a-f]{40}|[0-9a-f]{64}", text) else None


def _vm_may_hold(paths, vm_state: dict, link: Link) -> bool:
    """Whether the VM's state or the agreed one names any of `paths` (then their ids decide
    what is reused and what is the VM's own work)."""
    named = set()
    for overlay in (vm_state["overlay"], link.agreed_overlay or overlay_mod.empty()):
        named.update(overlay["index"], overlay["files"])
    return any(p in named for p in paths)


def _name_changed_file(worktree, sent: dict) -> None:
    """Raise the error that names a sent file which no longer hashes to the blob id the scan
    announced: it changed after the scan, or while it was sent (the stream itself hashes
    nothing, the agent checks every file). Returns if none did: the agent's own error stands."""
    for path, entry in sorted(sent.items()):
        try:
            now = overlay_mod.hash_worktree_file(os.path.join(worktree.root, path), worktree.algo)
        except (OSError, overlay_mod.FileChanged):
            now = None
        if now is None or now.oid != entry.oid:
            raise SlicerError("%s changed while it was being sent; run the command again" % display(path))


def _changed_meanwhile(reply: dict) -> list:
    """The paths the agent says the VM changed while the push was applied (any path the push
    wrote: placed, checked out, kept or removed), those that are safe worktree paths."""
    claimed = reply.get("changed_meanwhile")
    safe = []
    for path in claimed[:1000] if isinstance(claimed, list) else []:
        try:
            safe.append(check_relpath(path))
        except UnsafePath:
            continue
    return sorted(safe)


def _refuse_if_vm_has_work(link: Link, vm_state: dict, vm_view: dict, head: str = None, ours: dict = None,
                           worktree=None) -> None:
    if not link.agreed_commit:
        raise WouldLoseWork("VM %s already has a repository at %s that this worktree did not push"
                            % (link.vm, vm_state["path"]), hint="use --force to replace it")
    base_commit, base_overlay = link.agreed_commit, link.agreed_overlay
    if worktree is not None and vm_state["head"] and vm_state["head"] != base_commit:
        # VM commits the host has merged are pulled work (as pull measures it).
        base_commit, base_overlay, _, _ = agreed.measured_from(
            link, vm_state["head"], head, worktree.is_ancestor, lambda a, b: overlay_mod.tree_changes(worktree.git, a, b))
    changed = overlay_mod.changed_paths(base_overlay, vm_view)
    moved = vm_state["head"] != base_commit
    if ours is not None:    # what the VM already has of this very push (an interrupted one) is not its work
        changed = [p for p in changed if _entries(vm_view, p) != _entries(ours, p)]
        moved = moved and vm_state["head"] != head
    if (changed or moved) and vm_state.get("branch") != link.branch:
        # Pull brings work home from the linked branch only: pulling first would change nothing.
        where = "branch %s" % display(str(vm_state["branch"])) if vm_state.get("branch") else "a detached HEAD"
        raise WouldLoseWork("VM %s is on %s, not %s, with work that was not pulled" % (link.vm, where, link.branch),
                            hint="switch it back (`git slicer exec %s -- git switch %s`; its commits on the other "
                                 "branch come home with pull under refs/slicer/%s/), then pull; or push --force "
                                 "to overwrite it" % (link.vm, link.branch, link.vm),
                            details={"vm_head": vm_state["head"], "vm_branch": vm_state.get("branch"),
                                     "changed": changed})
    if changed or moved:
        what = []
        if moved:
            what.append("new commits (VM HEAD %s)" % (vm_state["head"] or "none")[:12])
        if changed:
            what.append("changed files: %s" % ", ".join(map(display, changed[:10])))
        raise WouldLoseWork("VM %s has work that was not pulled: %s" % (link.vm, "; ".join(what)),
                            hint="`git slicer pull %s` first, or push --force to overwrite it" % link.vm,
                            details={"vm_head": vm_state["head"], "changed": changed})


def _entries(overlay: dict, path: str):
    """A path's (index, worktree) entries in an overlay; "absent" where it has none."""
    return overlay["index"].get(path, "absent"), overlay["files"].get(path, "absent")


def _host_has(worktree, oids) -> list:
    if not oids:
        return []
    out = worktree.git(["cat-file", "--batch-check=%(objectname) %(objecttype)"],
                       input="".join(o + "\n" for o in oids).encode())
    return [line.split()[0] for line in out.decode().splitlines() if line.endswith(" commit")]


def _host_shallow(worktree) -> set:
    """The commits a shallow host repository's history stops at (its `shallow` file), or none."""
    try:
        with open(os.path.join(worktree.common_dir, "shallow"), "rb") as fh:
            return {line.strip().decode("ascii", "replace") for line in fh if line.strip()}
    except OSError:
        return set()


def _shallow_history(worktree, head: str, depth: int):
    """(commits at most `depth` generations from head, the boundary commits among them) for a
    `--depth` push; the VM records the boundary in .git/shallow."""
    out = worktree.git(["rev-list", "--parents", head]).decode().split("\n")
    parents = {line.split()[0]: line.split()[1:] for line in out if line}
    distance = {head: 1}
    frontier = [head]
    while frontier:
        nxt = []
        for oid in frontier:
            if distance[oid] < depth:
                for parent in parents.get(oid, []):
                    if parent not in distance:
                        distance[parent] = distance[oid] + 1
                        nxt.append(parent)
        frontier = nxt
    boundary = [c for c in distance if any(p not in distance for p in parents.get(c, []))]
    return sorted(distance), sorted(boundary)


def _send_pack(worktree, session, head, haves, blobs, commits) -> int:
    """Stream a pack: `head ^haves` (thin) plus staged blobs, or for a shallow push exactly the
    objects of `commits`."""
    with tempfile.TemporaryFile() as errors:
        if commits:
            listing = worktree.git(["rev-list", "--objects", "--no-walk", "--stdin"],
                                   input="".join(c + "\n" for c in commits).encode())
            args, stdin = ["pack-objects", "--stdout", "-q"], listing + "".join(b + "\n" for b in blobs).encode()
        else:
            revs = [head] + ["^" + h for h in haves] + blobs
            args, stdin = ["pack-objects", "--revs", "--thin", "--stdout", "-q"], "".join(r + "\n" for r in revs).encode()
        proc = subprocess.Popen(["git", *args], cwd=worktree.root, env=worktree.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors)
        writer = _feed(proc, stdin)
        try:
            total = session.conn.send_stream_from(proc.stdout)
        finally:
            writer.join()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            raise SlicerError("git pack-objects failed: %s" % errors.read().decode("utf-8", "replace").strip()[-500:])
    return total


def _feed(proc, data: bytes):
    def run():
        try:
            proc.stdin.write(data)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _identity(worktree) -> dict:
    config = {}
    for key in ("user.name", "user.email"):
        value = worktree.config(key)
        if value:
            config[key] = value
    return config


_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?([^/:]+):(?!//)(.+)$")
_URL = re.compile(r"^(ssh|git\+ssh|ssh\+git|https?|git)://(?:[^@/]*@)?([^/:]+)(?::\d+)?/(.+)$")


def safe_remote_url(url: str):
    """A remote URL the VM may see: ssh forms become https, credentials are dropped.

    Local paths and file:// URLs are dropped (they point into the host).
    """
    match = _URL.match(url)
    if match:
        scheme, host, path = match.groups()
        return "%s://%s/%s" % ("git" if scheme == "git" else "https", host, path)
    match = _SCP_LIKE.match(url)
    if match and not url.startswith(("/", ".", "file:")):
        return "https://%s/%s" % (match.group(1), match.group(2).lstrip("/"))
    return None


def _safe_remotes(worktree) -> dict:
    remotes = {}
    for name, url in worktree.remotes().items():
        safe = safe_remote_url(url)
        if safe:
            remotes[name] = safe
    return remotes
