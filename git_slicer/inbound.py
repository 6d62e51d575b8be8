"""Everything that comes in from a VM passes here, for pull, diff/log and the remote helper alike:

  - its repository state (validated by the session: types, object ids, modes, paths), its
    branches (names git would accept, well-formed ids, at most slicer.limit.refs), and whether
    the repository is there;
  - its objects: a pack fetched into quarantine (quarantine.py), checked, then moved in;
  - its worktree files: fetched into a staging directory and each checked against the blob id
    the VM announced for it (or taken from the host's object store when the host has the blob).

Nothing here writes into the host's worktree, index or refs: callers decide what lands where
(pull.Puller merges and writes under a journal; review builds trees in a scratch object store).
"""

from __future__ import annotations

import os
import re

from . import report
from .config import Settings
from .errors import AgentFailed, UnsafeInput
from .objects import ObjectReader
from .quarantine import ImportLimits, Quarantine
from .scan import KnownPaths
from .session import STATE_ENTRIES
from .wire import overlay as overlay_mod
from .wire import tarstream
from .wire.framing import crash_point
from .wire.gitobj import is_oid
from .wire.paths import display


def limits_from(settings: Settings):
    return (ImportLimits(pack_bytes=settings.get("slicer.limit.packBytes"),
                         objects=settings.get("slicer.limit.objects"),
                         tree_depth=settings.get("slicer.limit.treeDepth"),
                         path_bytes=settings.get("slicer.limit.pathBytes"),
                         refs=settings.get("slicer.limit.refs")),
            tarstream.Limits(max_entries=settings.get("slicer.limit.files"),
                             max_file_bytes=settings.get("slicer.limit.fileBytes"),
                             max_total_bytes=settings.get("slicer.limit.totalBytes"),
                             max_path_bytes=settings.get("slicer.limit.pathBytes"),
                             max_depth=settings.get("slicer.limit.pathDepth"),
                             max_link_bytes=settings.get("slicer.limit.linkBytes")))


class Inbound:
    """What one session brings in from the VM of `link` (its name, guest path, agreed state)."""

    def __init__(self, worktree, session, link, pack_limits: ImportLimits, file_limits: tarstream.Limits):
        self.wt = worktree
        self.session = session
        self.link = link
        self.pack_limits = pack_limits
        self.file_limits = file_limits
        self.known = KnownPaths(worktree, link.agreed_overlay)    # names with control characters allowed back
        self.refs = None        # refs/slicer/<vm>/* as read for the import, or before it by the caller
                                # (record_refs compares-and-swaps against them)

    def state(self, applied: str = None, max_entries: int = STATE_ENTRIES) -> dict:
        """The VM repository's state, validated by the session (see AgentSession.state)."""
        return self.session.state(self.link.guest_path, applied=applied, max_entries=max_entries, known=self.known)

    def branches(self, state: dict) -> dict:
        """The VM's branches that are safe to import; an error if it has no repository."""
        if not state["exists"]:
            raise AgentFailed("VM %s has no repository at %s" % (self.link.vm, display(str(state.get("path")))),
                              hint="push it again with `git slicer push %s`" % self.link.vm)
        return valid_branches(self.wt, state["branches"], self.pack_limits.refs)

    def import_objects(self, tips, blobs=(), head: str = "HEAD") -> None:
        """Bring the commits `tips` (and the blobs `blobs`) into the host's object store through
        quarantine; nothing lands unless everything the VM sent passed validation. `head` is the
        host's HEAD commit when the caller has it (a have for the VM's pack)."""
        wanted = sorted(set(tips))
        blobs = sorted(set(blobs))
        if self.refs is None:
            self.refs = slicer_refs(self.wt, self.link.vm)
        # A tip is here when the last import recorded it (its objects came with it) or it is
        # HEAD; any other is asked for. (A tip the host has all the same costs a small pack.)
        recorded = set(self.refs.values())
        absent = [t for t in wanted if t not in recorded]
        if absent or blobs:
            head = self.wt.rev("HEAD") if head == "HEAD" else head      # (a have too)
            absent = [t for t in absent if t != head] + (missing(self.wt, blobs) if blobs else [])
        if absent:
            haves = [h for h in {head, self.link.agreed_commit} if h] + list(self.refs.values())
            with Quarantine(self.wt, self.pack_limits, self.known) as q:
                self.session.fetch(self.link.guest_path, absent, sorted(set(haves)), q.receive,
                                   self.pack_limits.pack_bytes + 1)
                # Checked first: git rev-list (validate) stops at a missing tip with its own words.
                still = missing(self.wt, wanted + blobs, env=q.env)
                if still:
                    raise UnsafeInput("the VM's pack lacks objects it announced (%s)" % still[0][:12])
                q.validate(wanted)
                crash_point("pull:validated")
                q.migrate()
                report.info("imported %d byte(s) of objects from VM %s through quarantine"
                            % (self.session.conn.bytes_in, self.link.vm))
        crash_point("pull:objects-in")

    def fetch_files(self, changes, staging: str, odb: ObjectReader = None) -> None:
        """Put the new contents of every change (safewrite.Change) in `staging`: from the object
        store when the host has the blob (read through `odb` when the caller has one open),
        otherwise from the VM's worktree (checked against its blob id). Sets each change's
        `source` (regular files) or `target` (symlinks)."""
        needed = [c for c in changes if c.new is not None]
        from_vm = {}
        with ObjectReader(self.wt) if odb is None else _Borrowed(odb) as odb:   # one `git cat-file` for all
            for change in needed:
                found = odb.read(change.new.oid)
                if found is not None and found[0] == "blob":
                    data = found[1]
                    if change.new.mode == overlay_mod.MODE_LINK:
                        change.target = os.fsdecode(data)
                    else:
                        change.source = os.path.join(staging, change.new.oid + ".blob")
                        with open(change.source, "wb") as fh:
                            fh.write(data)
                else:
                    from_vm[change.path] = change
        if not from_vm:
            return
        files_dir = os.path.join(staging, "files")
        os.mkdir(files_dir)
        members = self.session.files(self.link.guest_path, {p: c.new for p, c in from_vm.items()},
                                     files_dir, self.file_limits, control_ok=set(from_vm), algo=self.wt.algo)
        got = {m.path: m for m in members}
        if set(got) != set(from_vm):
            raise UnsafeInput("VM %s sent other files than were asked for" % self.link.vm)
        for path, change in from_vm.items():
            member = got[path]
            if member.kind == "symlink":
                actual = overlay_mod.Entry(overlay_mod.MODE_LINK, overlay_mod.blob_oid(os.fsencode(member.target), self.wt.algo))
                change.target = member.target
            elif member.kind == "file":
                actual = overlay_mod.Entry(change.new.mode, member.oid or
                                           overlay_mod.hash_worktree_file(member.staged, self.wt.algo).oid)
                change.source = member.staged
            else:
                actual = None
            if actual != change.new:
                raise UnsafeInput("file %s from VM %s does not match its announced contents"
                                  % (display(path), self.link.vm))



class _Borrowed:
    """A reader the caller owns, used in a `with` without being closed."""

    def __init__(self, reader):
        self.reader = reader

    def __enter__(self):
        return self.reader

    def __exit__(self, *exc):
        pass


def missing(worktree, oids, env=None) -> list:
    if not oids:
        return []
    out = worktree.git(["cat-file", "--batch-check"], input="".join(o + "\n" for o in oids).encode(), env=env)
    return [line.split()[0] for line in out.decode().splitlines() if line.endswith(" missing")]


def valid_branches(worktree, branches: dict, max_refs: int = 10_000) -> dict:
    """VM branch names that are safe as `refs/slicer/<vm>/<name>`; others are dropped with a warning.
    More than `max_refs` branches, or two that cannot both be refs (`a` and `a/b`), is refused
    before anything is written."""
    if not isinstance(branches, dict):
        raise UnsafeInput("the VM sent a malformed repository state: branches")
    if len(branches) > max_refs:
        raise UnsafeInput("the VM reports %d branches, over slicer.limit.refs (%d); nothing was written"
                          % (len(branches), max_refs),
                          hint="delete branches in the VM, or raise slicer.limit.refs")
    valid = {}
    for name, oid in sorted(branches.items()):
        ok = isinstance(name, str) and is_oid(oid) and "\n" not in name and \
            valid_refname("refs/heads/" + name)      # git's check-ref-format rules
        if ok:
            valid[name] = oid
        else:
            report.warn("ignoring VM branch with an invalid name: %s" % display(str(name))[:100])
    for name in valid:
        parent = ref_parent(name, valid)
        if parent:
            raise UnsafeInput("the VM has branches %s and %s, which cannot both be refs (one would be a "
                              "directory of the other); nothing was written" % (display(parent), display(name)),
                              hint="rename or delete one of them in the VM and pull again")
    return valid


# git's check-ref-format rules (refs.c check_refname_component), in Python: importing pygit2
# for them alone cost a pull more than the check. tests/test_security_units.py holds this
# against libgit2's reference_is_valid_name.
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def valid_refname(name: str) -> bool:
    """Whether `name` (a full ref, `refs/heads/x`) is a name git accepts for a ref."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if not name or name == "@" or name.startswith("/") or name.endswith(("/", ".")) or _BAD_REF_CHARS.search(name):
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))


def ref_parent(name: str, names) -> str:
    """The first of `names` that is a directory prefix of `name` (`a` for `a/b`), or ""."""
    at = name.find("/")
    while at > 0:
        if name[:at] in names:
            return name[:at]
        at = name.find("/", at + 1)
    return ""


def slicer_refs(worktree, vm: str) -> dict:
    """refs/slicer/<vm>/* -> object id: the VM's branches as last imported."""
    out = worktree.git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/slicer/%s/" % vm])
    refs = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        oid, ref = line.split(" ", 1)
        refs[ref] = oid
    return refs
