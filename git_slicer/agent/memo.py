"""What a warm agent's last scan of a repository found, and whether it still holds.

A full `git status` of a 50k-file VM costs ~150 ms, and most requests find nothing changed
since the last one. A warm agent (one that serves a listening socket) keeps, per repository, the
state its last scan found and inotify watches over the worktree (agent/watch.py). The next
request then rescans only the paths that changed since (with `git status -- PATHS`, so git still
answers for each), or none. Anything it cannot vouch for means a full scan, exactly as before:

  - events were lost (queue overflow), the worktree or its .git is another directory than the
    watched one, or the watches are not in place (a remote file system, submodules or a nested
    repository, too many directories: asked again after RETRY_WATCHES_SECONDS);
  - anything in `.git` changed but refs, logs, objects, lock files and our own files: the index,
    config, info/ (exclude, attributes, sparse-checkout), ... The index this agent installed
    itself is recognised by its stat data;
  - HEAD names another commit or branch, or a replace ref exists (then nothing is remembered);
  - a global or system git config, ignore or attributes file, or the file core.excludesFile or
    core.attributesFile names, changed: their stat data, and the bytes of one changed within 2 s
    of being looked at (a second write in the same timestamp tick leaves the stat data as it
    was); taken before a full scan runs git and compared after it, so a change while git
    reads them is caught too;
  - a changed path is an ignore or attribute file, .gitmodules or .slicerignore (they change the
    status of other paths), or there are more than MAX_DIRTY changed paths;
  - the last full scan is older than TRUST_SECONDS: what no event reports (a write through a
    writable mmap or through a hard link from outside the worktree, an include.path) is seen
    within that time, as git's own fsmonitor sees it never.

After a push, the state is the one before it with the paths the push touched rescanned (see
transaction.touched_paths): the changes reported meanwhile elsewhere stay pending for the next
request. Nothing here is written to disk: a new agent starts with a full scan.

A push scans afresh every path it may write before it writes (server.py, Agent._rechecker; all
of them when `read-tree --reset` may run), whatever its state came from; `vm rm` asks for a
full scan.
One case is left: in a clean VM, when `git restore` and then the two-way merge both refuse, the
push falls back to `read-tree --reset`, which would also rewrite a tracked file changed in a way
no event reported within the last TRUST_SECONDS.

Callers hold the repository's agent lock (transaction.hold) around every call.
"""

from __future__ import annotations

import os
import threading
import time

from . import watch as watch_mod
from .watch import Changes, Unsupported, Watches

MAX_DIRTY = 1000
MAX_DIRTY_BYTES = 128 * 1024      # their names on one `git status` command line, well inside ARG_MAX
TRUST_SECONDS = 60.0
RETRY_WATCHES_SECONDS = 300.0
_SETTLED_NS = 2 * 10**9
_MAX_KEPT_BYTES = 1 << 20       # a recently changed config file larger than this is not trusted
_RULE_FILES = (".gitignore", ".gitattributes", ".gitmodules")
# Entries of .git whose change cannot change a path's status (the caller compares HEAD's commit).
_HARMLESS = {"HEAD", "ORIG_HEAD", "FETCH_HEAD", "COMMIT_EDITMSG", "packed-refs", "refs", "logs", "objects",
             "gc.pid", "gc.log", "description", "hooks", "branches"}

_enabled = False
_memos = {}
_registry = threading.Lock()


def enable() -> None:
    """Keep memos in this process (a warm agent: it serves more than one request)."""
    global _enabled
    _enabled = True


def of(root: str):
    """The memo of the repository at `root`, or None when this agent keeps none."""
    if not _enabled:
        return None
    with _registry:
        return _memos.setdefault(root, Memo(root))


def token(root: str):
    """Names the state the last scan of `root` found (a push records it in its journal)."""
    memo = of(root)
    return memo.token if memo is not None else None


def same_index(a, b) -> bool:
    """Whether two stat results show the same index file, unwritten since. Not its ctime: the
    agent unlinks its other names (the private copies it was made as) after installing it. git
    writes an index as a new file, so another one has another inode while this one exists."""
    return a is not None and b is not None and \
        (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


def read_head(root: str, branches: dict):
    """(HEAD's commit or None, its branch or None) from .git/HEAD and `branches` (refs/heads),
    or None when HEAD is anything else (then git is asked)."""
    try:
        with open(os.path.join(root, ".git", "HEAD"), "rb") as fh:
            text = fh.read(4096).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    if text.startswith("ref: refs/heads/") and text.endswith("\n") and text.count("\n") == 1:
        name = text[len("ref: refs/heads/"):-1]
        return branches.get(name), name
    oid = text.strip()
    if text.count("\n") == 1 and len(oid) in (40, 64) and all(c in "0123456789abcdef" for c in oid):
        return oid, None
    return None


def _config_files() -> list:
    """The files outside the repository whose contents decide a path's status, as the agent's
    git finds them: it runs with HOME and GIT_CONFIG_* but no XDG_CONFIG_HOME (server._git_env)."""
    home = os.path.expanduser("~")
    files = [os.path.join(home, ".gitconfig"), "/etc/gitconfig", "/etc/gitattributes"]
    files += [os.path.join(home, ".config", "git", name) for name in ("config", "ignore", "attributes")]
    files += [os.environ[v] for v in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM") if os.environ.get(v)]
    return files


def _configs(paths) -> tuple:
    """(paths, what each is now): the stat data of the git config, ignore and attributes files
    outside the repository (_config_files, then core.excludesFile and core.attributesFile), None
    for a missing one. See _now for what else is kept."""
    paths = tuple(paths)
    return paths, _now(paths, ())


def _now(paths, read) -> list:
    """What each of `paths` is: its stat data, and its bytes too when it changed in the last 2 s
    or is in `read` (a write in the same timestamp tick as that change would leave its stat data
    as it is). None in place of the list when such a file is too large to keep."""
    now = time.time_ns()
    seen = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            seen.append(None)
            continue
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if path in read or now - max(st.st_mtime_ns, st.st_ctime_ns) < _SETTLED_NS:
            try:
                with open(path, "rb") as fh:
                    data = fh.read(_MAX_KEPT_BYTES + 1)
            except OSError:
                return None
            if len(data) > _MAX_KEPT_BYTES:
                return None
            key += (data,)
        seen.append(key)
    return seen


def _unchanged(configs) -> bool:
    """Whether the files `configs` (from _configs) describe are as they were then."""
    paths, then = configs
    if then is None:
        return False
    kept = {path for path, key in zip(paths, then) if key is not None and len(key) == 5}
    return _now(paths, kept) == then


def _harmless(name: str) -> bool:
    # (a split index's shared file is named by its content and read only through the index that
    # names it: a new index is a change of .git/index)
    return name in _HARMLESS or name.startswith(("slicer", ".tmp-", "sharedindex.")) or name.endswith(".lock")


def _decides_status(path: str) -> bool:
    return path == ".slicerignore" or path.rsplit("/", 1)[-1] in _RULE_FILES


def under(path: str, marks: set) -> bool:
    """Whether `path` is one of `marks` or lies below one."""
    while True:
        if path in marks:
            return True
        cut = path.rfind("/")
        if cut < 0:
            return False
        path = path[:cut]


def with_rescanned(overlay: dict, dirty, partial: dict) -> dict:
    """`overlay` with everything at or below `dirty` replaced by `partial` (their scan)."""
    marks = set(dirty)
    return {part: {**{p: e for p, e in overlay[part].items() if not under(p, marks)}, **partial[part]}
            for part in ("index", "files")}


class Memo:
    def __init__(self, root: str):
        self.root = root
        self.watches = None
        self.disabled_until = 0.0   # no watches possible here until then: every scan is a full one
        self.known = None           # {"head", "branch", "overlay", "configs", "since"}
        self.sources = ()           # the config files the last full scan's git named (rule_sources)
        self._scan_configs = None   # the config files as the full scan under way started with
        self.pending = set()        # paths changed during or since that scan: rescanned next
        self.token = None
        self.recalled = False       # the last state came from memory, not a full scan
        self._before_push = None

    def forget(self, watches_too: bool = False) -> None:
        """Drop what the last scan found (the next request scans in full). `recalled` stays:
        it says where the answer already given came from."""
        self.known, self.pending, self.token = None, set(), None
        self._before_push = None
        if watches_too and self.watches is not None:
            self.watches.close()
            self.watches = None

    def _drain(self) -> Changes:
        if self.watches is None or watch_mod.identity(self.root) != self.watches.identity:
            changes = Changes()
            changes.lost = True
            return changes
        return self.watches.drain()

    def _remember(self, changes: Changes, overlay: dict, head, branch, installed, since: float,
                  configs) -> None:
        """Keep `overlay` as the state found, scanned while the config files were `configs`
        (from _configs, taken before the scan's git ran)."""
        if changes.lost:
            self.forget(watches_too=True)
            return
        git = set(changes.git)
        if "index" in git and same_index(installed, _stat(os.path.join(self.root, ".git", "index"))):
            git.discard("index")        # the index this agent installed, and no later one
        if configs is None or not _unchanged(configs) or not all(_harmless(name) for name in git):
            self.forget()
            return
        self.known = {"head": head, "branch": branch, "overlay": overlay, "configs": configs, "since": since}
        self.pending = set(changes.paths)
        self.token = os.urandom(8).hex()
        self._before_push = None

    # -- a full scan ----------------------------------------------------------------------------
    def begin_scan(self) -> None:
        """Before a full scan: the watches in place, earlier events dropped (the scan sees them),
        the config files as the scan's git will read them."""
        self.forget()
        self.recalled = False
        self._scan_configs = None
        if time.monotonic() < self.disabled_until:
            return
        if self.watches is not None and self._drain().lost:
            self.forget(watches_too=True)
        if self.watches is None:
            try:
                self.watches = Watches(self.root)
            except (Unsupported, OSError):
                # (a nested repository, too many directories, a remote file system: asked again
                # later, since what stood in the way may go)
                self.disabled_until = time.monotonic() + RETRY_WATCHES_SECONDS
        if self.watches is not None:
            self._scan_configs = _configs(_config_files() + list(self.sources))

    def end_scan(self, overlay: dict, head, branch, installed, sources) -> None:
        """After a full scan: remember what it found; what changed while it ran stays pending.
        `installed`: the stat data of the index the scan installed (or None); `sources`: the
        files core.excludesFile and core.attributesFile name (absolute paths). When they are
        not the ones the scan started with, nothing is kept this time (the next scan starts
        with these)."""
        configs, self._scan_configs = self._scan_configs, None
        same_sources = tuple(sources) == self.sources
        self.sources = tuple(sources)
        if self.watches is not None and configs is not None and same_sources:
            self._remember(self._drain(), overlay, head, branch, installed, time.monotonic(), configs)

    # -- a request that finds little or nothing changed -------------------------------------------
    def remembers(self) -> bool:
        return self.known is not None

    def recall(self, head, branch):
        """The paths to rescan ([]: none) for the remembered state to be the current one, or
        None: scan in full. `head`, `branch`: what HEAD says now."""
        known = self.known
        changes = self._drain()
        dirty = self.pending | changes.paths
        if (changes.lost or not all(_harmless(name) for name in changes.git)
                or (head, branch) != (known["head"], known["branch"])
                or time.monotonic() - known["since"] > TRUST_SECONDS
                or not _unchanged(known["configs"])
                or len(dirty) > MAX_DIRTY or sum(len(p) + 1 for p in dirty) > MAX_DIRTY_BYTES
                or any(_decides_status(p) for p in dirty)):
            self.forget(watches_too=changes.lost)
            return None
        self.pending, self.recalled = dirty, True
        return sorted(dirty)

    def patched(self, dirty, partial: dict, head, branch) -> dict:
        """The remembered overlay with `dirty` replaced by `partial`, their fresh scan."""
        known = self.known
        overlay = with_rescanned(known["overlay"], dirty, partial)
        self._remember(self._drain(), overlay, head, branch, None, known["since"], known["configs"])
        return overlay

    # -- the state after a push ---------------------------------------------------------------------
    def before_push_scan(self, since_token) -> bool:
        """Before scanning the paths a push touched: whether the state before the push was ours
        (`since_token`, from the journal), so the one after it can be remembered too."""
        if since_token is None or since_token != self.token or self.known is None:
            self.forget()
            return False
        changes = self._drain()                 # the push's own writes, and anyone else's
        if self._before_push is not None:       # an earlier try of this scan found a file changing
            changes.paths |= self._before_push.paths
            changes.git |= self._before_push.git
            changes.lost |= self._before_push.lost
        self._before_push = changes
        return True

    def after_push_scan(self, touched, overlay: dict, head, branch, installed) -> None:
        before, self._before_push = self._before_push, None
        if before is None:
            return
        marks = set(touched)
        changes = self._drain()
        changes.lost |= before.lost
        changes.git |= before.git
        changes.paths |= {p for p in self.pending | before.paths if not under(p, marks)}
        self._remember(changes, overlay, head, branch, installed, self.known["since"], self.known["configs"])


def _stat(path: str):
    try:
        return os.stat(path)
    except OSError:
        return None
