"""Links between a worktree and its VMs, kept in the worktree's own git metadata.

Each link is `<git-path slicer>/links/<vm>.json` (per worktree: `.git/worktrees/<id>/slicer` in a
linked worktree). It records how to reach the VM and the last state both sides agreed on, which
makes later pushes deltas and lets pull tell the VM's changes from the host's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field

from . import report
from .config import RESERVED_VM_NAMES
from .errors import NotLinked, SlicerError, UsageError
from .repo import Worktree
from .wire.files import utc_now, write_atomic
from .wire.gitobj import entries_of
from .wire.paths import display

_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_vm_name(name: str) -> str:
    if not _VM_NAME.match(name or "") or name in RESERVED_VM_NAMES or name.endswith(".json"):
        raise UsageError("invalid VM name %r (letters, digits, '.', '_', '-'; at most 63)" % name)
    return name


def new_vm_id() -> str:
    """A VM's identity: links name it, so a VM that later takes the same name is not mistaken for it."""
    return os.urandom(16).hex()        # 128 random bits (uuid4 would cost an import per command)


@dataclass
class Link:
    vm: str
    provider: str = "local"
    address: str = ""
    guest_path: str = ""
    branch: str = ""
    agreed_commit: str = ""                       # last commit both sides had
    agreed_overlay: dict = field(default_factory=lambda: {"index": {}, "files": {}})
    pushed_at: str = ""
    pulled_at: str = ""
    created_at: str = field(default_factory=utc_now)
    last_result: str = ""                         # "ok" | a one-line failure (for status/hooks)
    vm_id: str = ""                               # the VM's identity (made at launch): a VM that
                                                  # later takes the same name is not this one
    launched: bool = False                        # this worktree launched the VM (`push --launch`)
    pending: dict = None                          # a push sent but not yet confirmed: {id, commit, branch}


def encoded(link: Link) -> bytes:
    """The bytes a link is saved as."""
    return json.dumps(asdict(link), indent=1, sort_keys=True).encode()


class LinkStore:
    def __init__(self, slicer_dir: str):
        self.dir = os.path.join(slicer_dir, "links")

    @classmethod
    def of(cls, worktree) -> "LinkStore":
        return cls(worktree.git_path("slicer"))

    def _path(self, vm: str) -> str:
        return os.path.join(self.dir, check_vm_name(vm) + ".json")

    def get(self, vm: str):
        path = self._path(vm)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_LINK_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _corrupt(path, vm, exc.strerror) from None
        return parse_link(raw, path, vm)

    def save(self, link: Link) -> None:
        write_atomic(self._path(link.vm), encoded(link))

    def remove(self, vm: str) -> bool:
        try:
            os.unlink(self._path(vm))
            return True
        except FileNotFoundError:
            return False

    def all(self):
        try:
            names = sorted(n[:-5] for n in os.listdir(self.dir) if n.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        valid = []
        for name in names:
            if _VM_NAME.match(name) and not name.endswith(".json"):
                valid.append(name)
            else:             # not a file we wrote (e.g. "old copy.json"): never a reason to fail
                report.warn_once("ignoring %s: not a link file name" % display(os.path.join(self.dir, name + ".json")))
        links = [self.get(n) for n in valid]
        return [link for link in links if link is not None]


def repository_links(worktree):
    """[(worktree, link)] for every link in every worktree of `worktree`'s repository (links
    live per worktree, so a VM may be linked from several)."""
    found = []
    for path, _ in worktree.worktrees():
        if not os.path.isdir(path):
            continue
        same = os.path.realpath(path) == os.path.realpath(worktree.root)
        try:
            other = worktree if same else Worktree(path)
        except SlicerError:
            continue
        found += [(other, link) for link in LinkStore.of(other).all()]
    return found


def not_linked(worktree, name: str, what: str = None) -> NotLinked:
    """The error for a VM this worktree has no (completed) link to, with the way on: the other
    worktree of the repository that links it, else how to link it."""
    if what is None and worktree is not None and LinkStore.of(worktree).get(name) is not None:
        # A link whose first push never completed: only a push to that VM finishes it (a new
        # VM cannot take the name while the link holds it).
        return NotLinked("VM %s has no state agreed with this worktree yet: its first push did not complete"
                         % name, hint="git slicer push %s" % name)
    what = what or "this worktree is not linked to VM %s" % name
    try:
        elsewhere = [other.root for other, link in repository_links(worktree)
                     if link.vm == name and os.path.realpath(other.root) != os.path.realpath(worktree.root)]
    except SlicerError:
        elsewhere = []
    if elsewhere:
        return NotLinked("%s (the worktree at %s is)" % (what, elsewhere[0]),
                         hint="run the command there: git -C %s slicer ..." % shlex.quote(elsewhere[0]))
    return NotLinked(what, hint="link it with `git slicer push %s` (a VM that exists: `git slicer vm list`) or "
                                "`git slicer push --launch %s` (a new one)" % (name, name))


MAX_LINK_BYTES = 64 * 1024 * 1024
_TYPES = {f.name: {"str": str, "dict": dict, "int": int, "bool": bool}.get(str(f.type), object)
          for f in Link.__dataclass_fields__.values()}
_NULLABLE = {f.name: f.default is None for f in Link.__dataclass_fields__.values()}


def _corrupt(path: str, vm: str, why: str) -> SlicerError:
    return SlicerError("link file %s is corrupt (%s)" % (display(path), why),
                       hint="restore it, or remove it with `git slicer unlink %s` and push again" % vm)


def parse_link(raw: bytes, path: str, vm: str) -> Link:
    """A Link from the bytes of its file; anything but the shape we write is one clear error."""
    if len(raw) > MAX_LINK_BYTES:
        raise _corrupt(path, vm, "larger than %d bytes" % MAX_LINK_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _corrupt(path, vm, "empty" if not raw.strip() else "not JSON") from None
    if not isinstance(data, dict):
        raise _corrupt(path, vm, "not a JSON object")
    known = {k: v for k, v in data.items() if k in _TYPES}
    for name, value in known.items():
        if not isinstance(value, _TYPES[name]) and not (value is None and _NULLABLE[name]):
            raise _corrupt(path, vm, "%s is not a %s" % (name, _TYPES[name].__name__))
    overlay = known.get("agreed_overlay")
    if overlay is not None and not (set(overlay) == {"index", "files"} and all(
            isinstance(overlay[k], dict) for k in ("index", "files"))):
        raise _corrupt(path, vm, "agreed_overlay is malformed")
    if overlay is not None:
        try:
            known["agreed_overlay"] = {part: entries_of(overlay[part]) for part in ("index", "files")}
        except ValueError:
            raise _corrupt(path, vm, "agreed_overlay is malformed") from None
    if known.get("vm", vm) != vm:
        raise _corrupt(path, vm, "it names VM %s" % display_name(known["vm"]))
    known["vm"] = vm
    return Link(**known)


def display_name(text: str) -> str:
    return display(text[:100])
