"""The guest agent: owns the VM-side repository and serves protocol v1 requests.

Stdlib + the git command line only, so it runs on any VM with python3 >= 3.9 and git. The host
is trusted here (it started us); requests are still checked so a confused host fails cleanly.
"""

from __future__ import annotations

import functools
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time

from .. import __version__
from ..wire import overlay as overlay_mod
from ..wire import tarstream
from ..wire.files import write_atomic
from ..wire.gitobj import is_oid
from ..wire.framing import (AGENT_NAME, PROTOCOL_VERSION, Connection, ProtocolError,
                            crash_point, error_reply)
from ..wire.paths import UnsafePath, display
from . import kept as kept_mod
from . import memo as memo_mod
from . import transaction
from .errors import AgentError

CAPS = ["pack", "tar", "shallow", "thin", "push-begin", "later-ids"]
MAX_PUSH_BYTES = 1 << 40        # the host is trusted; the cap only stops runaway streams
_EXCLUDES_HEADER = "# the host's core.excludesFile and info/exclude patterns: git-slicer rewrites this on every push"
_ATTRIBUTES_HEADER = "# the host's info/attributes: git-slicer rewrites this on every push"

_KEEP_ENV = ("HOME", "PATH", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TZ")


def _present(root: str, path: str) -> bool:
    """Whether anything is at `path` below `root` (or in the way of it: a file where a
    directory of it should be)."""
    try:
        os.lstat(os.path.join(root, path))
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _git_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k.startswith("GIT_CONFIG")
           or k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_LITERAL_PATHSPECS"] = "1"
    return env


# A warm agent serves many requests: each repository's object format, remembered with the
# identity of the .git/config that says it (a re-made repository has another file), saves a git
# process per request.
_OBJECT_FORMATS = {}


# What a push made sure of in each repository's .git/config (the file's identity then, the
# settings): a later push with the same settings runs no git for them while the file is the same.
# Kept only when the file's last change was 2 s before (git's racy rule): a change in the same
# timestamp tick would leave the identity as it was.
_CONFIGURED = {}
_SETTLED_NS = 2 * 10**9


def _config_identity(root: str):
    try:
        st = os.stat(os.path.join(root, ".git", "config"))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Repo:
    """The VM-side repository at one path."""

    def __init__(self, path: str):
        self.root = os.path.abspath(os.path.expanduser(path))
        self.env = _git_env()
        self._algo = None           # the object format, asked once (see algo)
        self.index_installed = None   # stat data of the index this request installed (agent/memo.py)

    @property
    def exists(self) -> bool:
        return os.path.isdir(os.path.join(self.root, ".git"))

    def git(self, args, input=None, check=True, env=None) -> bytes:
        proc = subprocess.run(["git", *args], cwd=self.root, env={**self.env, **env} if env else self.env, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check and proc.returncode != 0:
            raise AgentError("git-failed", "git %s failed: %s" % (
                args[0], proc.stderr.decode("utf-8", "replace").strip()[:2000]))
        return proc.stdout

    def rev(self, name: str):
        out = self.git(["rev-parse", "-q", "--verify", name + "^{commit}"], check=False).strip()
        return out.decode() or None

    def algo(self) -> str:
        if self._algo is None:                      # asked several times per request
            identity = _config_identity(self.root)
            known = _OBJECT_FORMATS.get(self.root)
            if identity is not None and known and known[0] == identity:
                self._algo = known[1]
            else:
                fmt = self.git(["rev-parse", "--show-object-format"], check=False).strip().decode()
                self._algo = "sha256" if fmt == "sha256" else "sha1"
                if identity is not None:
                    _OBJECT_FORMATS[self.root] = (identity, self._algo)
        return self._algo

    def excludes(self):
        ignore = os.path.join(self.root, ".slicerignore")
        return ["core.excludesFile=" + ignore] if os.path.isfile(ignore) else []

    def rule_sources(self) -> list:
        """The files core.excludesFile and core.attributesFile name (absolute; git reads a
        relative one from the worktree's top), for agent/memo.py."""
        out = self.git(["config", "-z", "--get-regexp", r"^core\.(excludesfile|attributesfile)$"], check=False)
        paths = []
        for item in out.split(b"\0"):
            _, _, value = item.partition(b"\n")
            if value:
                paths.append(os.path.normpath(os.path.join(self.root, os.path.expanduser(os.fsdecode(value)))))
        return paths

    @staticmethod
    def absent() -> dict:
        """The state of a repository that is not there (yet)."""
        return {"exists": False, "branch": None, "head": None, "branches": {},
                "overlay": overlay_mod.empty(), "object_format": None}

    def stat_cache_path(self) -> str:
        return os.path.join(self.root, ".git", "slicer-statcache.json")

    def state(self, paths=None, vouched=None, since=None) -> dict:
        """HEAD, its branch, the branches and the overlay, from one `git status`. With `paths`
        (transaction.touched_paths), the overlay is scanned below those paths only: the caller
        knows every other path is clean. `vouched`: {path: (stat data, Entry)} of files the
        caller has just written (StatCache.vouch). `since`: the memo token the push that wrote
        them started from (agent/memo.py). A warm agent rescans only what changed since its
        last scan when it can vouch for the rest (agent/memo.py). A file that changes while it
        is hashed is read again (three tries, as the host's scan)."""
        for attempt in range(3):
            try:
                return self._state(paths, vouched, since)
            except overlay_mod.FileChanged:
                if attempt == 2:
                    raise AgentError("busy", "files in the VM keep changing while they are scanned; "
                                     "try again") from None

    def _state(self, paths, vouched, since) -> dict:
        if not self.exists:
            return self.absent()
        # The branches are listed while the scan runs (the caller holds the agent lock: nothing
        # moves in between); a warm agent's status waits on the VM's scan alone.
        refs = _Branches(self.root, self.env)
        memo = memo_mod.of(self.root)
        try:
            cache_path = self.stat_cache_path()
            cache = overlay_mod.StatCache.load(cache_path)
            for path, (st, entry) in (vouched or {}).items():
                cache.vouch(path, st, entry)
            where = {"head": None, "branch": None}      # HEAD and its branch, from the same `git status`
            remembered = None
            if paths:
                # After a push: the stat data git would refresh is that of files written this
                # second, which git counts as racy and settles at the next full scan anyway; not
                # writing the 6 MB index here saves ~20 ms at 50k files.
                resumed = memo is not None and memo.before_push_scan(since)
                overlay = overlay_mod.scan(self.root, self.git, self.algo(), self.excludes(), refresh_index=False,
                                           cache=cache, branch=where, paths=paths)
                if resumed:
                    memo.after_push_scan(paths, overlay, where["head"], where["branch"], self.index_installed)
            else:
                remembered = overlay = self._recalled(memo, refs, cache, where) \
                    if memo is not None and memo.remembers() else None
                if overlay is None:
                    if memo is not None:
                        memo.begin_scan()
                    # `git status` refreshes a private copy of the index: a VM killed mid-scan never
                    # leaves a .git/index.lock that is not recognisably ours (agent/transaction.py).
                    self.index_installed = None
                    with transaction.scan_index(self) as env:
                        overlay = overlay_mod.scan(self.root, lambda args: self.git(args, env=env), self.algo(),
                                                   self.excludes(), cache=cache, branch=where, paths=paths)
                    if memo is not None:
                        refs.result()
                        if refs.replaced:       # no memory of a state replace refs decide
                            memo.forget()
                        else:
                            memo.end_scan(overlay, where["head"], where["branch"], self.index_installed,
                                          self.rule_sources())
            try:
                if remembered is None:  # (a rescan of a few paths would drop every other entry)
                    cache.dump(cache_path)
            except OSError:
                pass
        except overlay_mod.UnmergedPaths as exc:
            raise AgentError("unmerged", "the VM repository has unmerged paths: " + ", ".join(exc.paths[:10]))
        finally:
            refs.finish()
        return {"exists": True, "branch": where["branch"], "head": where["head"], "branches": refs.result(),
                "stash": refs.stash, "overlay": overlay, "object_format": self.algo(),
                "shallow": os.path.exists(os.path.join(self.root, ".git", "shallow"))}

    def _recalled(self, memo, refs, cache, where):
        """The overlay from the memo and a scan of what changed since, or None (scan in full)."""
        head = memo_mod.read_head(self.root, refs.result())
        # (with replace refs, what a commit holds is theirs to say, and they move no file)
        dirty = memo.recall(*head) if head is not None and not refs.replaced else None
        if dirty is None:
            return None
        where["head"], where["branch"] = head
        partial = overlay_mod.empty()
        if dirty:
            partial = overlay_mod.scan(self.root, self.git, self.algo(), self.excludes(), refresh_index=False,
                                       cache=cache, paths=dirty)
        return memo.patched(dirty, partial, *head)


class _Branches:
    """`git for-each-ref refs/heads/ refs/replace/ refs/stash`, running beside the scan:
    result() is {branch: commit}; then `replaced` says whether any replace ref exists, and
    `stash` is the newest stash entry's commit or None (work kept nowhere else)."""

    def __init__(self, root: str, env: dict):
        self._proc = subprocess.Popen(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/",
                                       "refs/replace/", "refs/stash"], cwd=root, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._output = None
        self.replaced = False
        self.stash = None

    def finish(self) -> None:
        if self._output is None:
            self._output = self._proc.communicate()

    def result(self) -> dict:
        self.finish()
        out, err = self._output
        if self._proc.returncode != 0:
            raise AgentError("git-failed", "git for-each-ref failed: " + err.decode("utf-8", "replace").strip()[:2000])
        branches = {}
        for line in out.decode("utf-8", "surrogateescape").splitlines():
            oid, ref = line.split(" ", 1)
            if ref.startswith("refs/replace/"):
                self.replaced = True
            elif ref == "refs/stash":
                self.stash = oid
            else:
                branches[ref[len("refs/heads/"):]] = oid
        return branches


class Agent:
    def __init__(self, conn: Connection):
        self.conn = conn

    def serve(self) -> int:
        while True:
            try:
                request = self.conn.recv()
            except ProtocolError as exc:
                if "closed by peer" in str(exc):
                    return 0
                raise
            op = request.get("op")
            handler = getattr(self, "op_" + str(op).replace("-", "_"), None)
            if handler is None:
                self.conn.send(error_reply("unknown-op", "unknown request %r" % op))
                continue
            try:
                reply = handler(request)
            except AgentError as exc:
                self.conn.send(error_reply(exc.code, str(exc)))
                if request.get("_streaming"):
                    return 1            # the stream is desynchronised: end the connection
                continue
            except (ProtocolError, tarstream.UnsafeArchive, UnsafePath, OSError) as exc:
                self.conn.send(error_reply("failed", "%s: %s" % (op, exc)))
                return 1
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # A field missing or of the wrong type: the host is ours, but a confused one gets
                # one line, and this connection (or this warm agent) lives on unless mid-stream.
                what = "missing %s" % exc if isinstance(exc, KeyError) else "%s: %s" % (type(exc).__name__, exc)
                self.conn.send(error_reply("bad-request", "%s: malformed request (%s)" % (op, what[:200])))
                if request.get("_streaming"):
                    return 1
                continue
            if reply is not None:
                self.conn.send(reply)
            if op == "bye":
                return 0

    # -- requests ----------------------------------------------------------
    def op_hello(self, request):
        _yield_to(request.get("nice"))
        version = _git_version()
        if request.get("protocol") != PROTOCOL_VERSION:
            raise AgentError("version", "agent speaks protocol %d, host asked for %r"
                             % (PROTOCOL_VERSION, request.get("protocol")))
        return {"ok": True, "agent": AGENT_NAME, "protocol": PROTOCOL_VERSION, "version": __version__,
                "caps": CAPS, "git": version, "python": "%d.%d.%d" % sys.version_info[:3],
                "home": os.path.expanduser("~"), "vm_id": _vm_identity(request.get("vm_id"))}

    def op_bye(self, request):
        return {"ok": True}

    def op_state(self, request):
        """The repository's state; with `applied` (a push id), also that push's record if it is
        the last one the VM completed (the host's check on a push it lost track of)."""
        repo = Repo(request["path"])
        if not repo.exists:
            return {"ok": True, "path": repo.root, **repo.absent()}     # (no lock to take: no memory used)
        with transaction.hold(repo):
            transaction.recover(repo)
            memo = memo_mod.of(repo.root)
            if request.get("fresh") and memo is not None:
                memo.forget()                   # a full scan (agent/memo.py), e.g. before the VM is removed
            reply = {"ok": True, "path": repo.root, **repo.state()}
            if request.get("applied"):
                reply["applied"] = transaction.applied(repo, request["applied"])
            _add_kept(repo, reply)
        base = request.get("base")
        if repo.exists and is_oid(base) and base == reply["head"]:
            reply["behind"], reply["ahead"], reply["since_base"] = 0, 0, {}    # in sync: no git to ask
        elif repo.exists and is_oid(base) and reply["head"] and repo.rev(base):
            counts = repo.git(["rev-list", "--left-right", "--count", "%s...%s" % (base, reply["head"])]).split()
            reply["behind"], reply["ahead"] = int(counts[0]), int(counts[1])
            # What the VM's commits changed since `base`: lets the host tell the VM's own changes
            # from files it pushed itself, even when the host lacks the VM's new commits.
            reply["since_base"] = overlay_mod.tree_changes(repo.git, base, reply["head"])
        return reply

    def op_push_begin(self, request):
        """A push that reads the VM once: under the agent lock, the state (as `state` answers
        it), then the connection's next request, `push` or `cancel`, under that same hold with
        that state as the VM's current one (no second scan, nothing can move in between)."""
        repo = Repo(request["path"])
        if not repo.exists:                     # nothing to lock yet: `push` makes the repository
            self.conn.send({"ok": True, "path": repo.root, **repo.absent()})
            return self._push_or_cancel(request, repo.root, None)
        with transaction.hold(repo):
            transaction.recover(repo)
            current = repo.state()
            reply = {"ok": True, "path": repo.root, **current}
            if request.get("applied"):
                reply["applied"] = transaction.applied(repo, request["applied"])
            _add_kept(repo, reply)
            self.conn.send(reply)
            return self._push_or_cancel(request, repo.root, current)

    def _push_or_cancel(self, begin, path: str, current):
        request = self.conn.recv()
        op = request.get("op")
        if op == "cancel":
            return {"ok": True}
        if op != "push" or not isinstance(request.get("path"), str) or Repo(request["path"]).root != path:
            raise AgentError("bad-request", "after push-begin: a push of the same path, or cancel")
        try:
            return self.op_push(request, current)
        finally:
            begin["_streaming"] = request.get("_streaming")     # serve() ends a desynchronised stream

    def op_push(self, request, current=None):
        """Apply a push. `current`: the state push-begin read under the lock this call runs in."""
        repo = Repo(request["path"])
        branch = request["branch"]
        commit = request["commit"]
        try:
            request["overlay"] = overlay_mod.decoded(request["overlay"])    # entries read as .mode/.oid
        except (KeyError, TypeError, AttributeError, ValueError):
            raise AgentError("bad-request", "a push needs the new overlay") from None
        if not is_oid(commit) or not _branch_name_ok(str(branch), repo.env):
            raise AgentError("bad-request", "invalid branch name %r or commit %r" % (branch, commit))
        expect = request.get("expect")
        object_format = request.get("object_format") or "sha1"
        if object_format not in ("sha1", "sha256"):
            raise AgentError("bad-request", "unknown object format %r" % object_format)
        if not repo.exists:
            if expect is not None:
                raise AgentError("vm-changed", "the VM repository changed since it was inspected; retry")
            os.makedirs(repo.root, exist_ok=True)
            # The host's object format: a pack of sha256 objects does not index into a sha1 repository.
            repo.git(["init", "-q", "--object-format=" + object_format])
        elif repo.algo() != object_format:
            raise AgentError("object-format", "the VM repository at %s uses %s objects, the host's uses %s"
                             % (repo.root, repo.algo(), object_format))
        if current is not None:                 # push-begin holds the lock and has read the state
            return self._apply_push(repo, request, current)
        # The agent lock for the whole push: no other agent reads a half-applied repository.
        with transaction.hold(repo):
            transaction.recover(repo)
            current = repo.state()                   # one scan serves both uses below
            if expect is not None and (current["head"] != expect.get("head")
                                       or current["overlay"] != expect.get("overlay")):
                raise AgentError("vm-changed", "the VM repository changed since it was inspected; retry")
            return self._apply_push(repo, request, current)

    def _apply_push(self, repo, request, current):
        """Receive a push's streams and apply them (under the agent lock, `current` the VM's state)."""
        branch, commit, new_overlay = request["branch"], request["commit"], request["overlay"]
        pending = _pending_paths(request, new_overlay)
        recheck = self._rechecker(repo, current) if current["exists"] else None
        plan = self._config_plan(repo, request)
        if recheck is not None and plan["rules"]:
            # What git ignores or how it compares files is about to change, and with it what a
            # scan reports: the VM is checked now, under the old rules, and read again under the
            # new ones as the state the check after the streams compares with.
            recheck(None)
        rules_changed = self._configure(repo, plan)
        if rules_changed and recheck is not None:
            recheck = self._rechecker(repo, repo.state())
        self.conn.send({"ok": True, "ready": True})
        request["_streaming"] = True
        if request.get("pack"):
            self._receive_pack(repo)
        crash_point("agent:push-received")
        staging = transaction.staging(repo)
        members = {}
        if request.get("tar"):
            limits = tarstream.Limits(max_total_bytes=MAX_PUSH_BYTES, max_file_bytes=MAX_PUSH_BYTES)
            for m in tarstream.read_members(self.conn.recv_stream(MAX_PUSH_BYTES), staging,
                                            limits, check_collisions=False, control_ok=True, algo=repo.algo()):
                members[m.path] = m
        request["_streaming"] = False
        if pending:
            self._take_ids(repo, new_overlay, pending)
        self._verify_members(repo, members, new_overlay)
        if current["exists"] and self._head_moved(repo, current):
            raise AgentError("vm-changed", "the VM repository changed since it was inspected (a commit or "
                             "checkout in the VM while the push was sent); retry")
        journal = transaction.prepare(
            repo, push_id=str(request.get("id") or os.urandom(8).hex()), branch=branch, commit=commit,
            old_head=current["head"] if current["exists"] and not rules_changed else None,
            old_overlay=current["overlay"], new_overlay=new_overlay, members=members,
            reuse=request.get("reuse", []), extra=request.get("extra", []), shallow=request.get("shallow"),
            since=lambda: memo_mod.token(repo.root), recheck=recheck)
        crash_point("agent:push-journaled")
        state = transaction.finish(repo, journal)
        return {"ok": True, "path": repo.root, **state}

    def op_fetch(self, request):
        repo = Repo(request["path"])
        if not repo.exists:
            raise AgentError("no-repo", "no repository at %s in the VM" % repo.root)
        self._recover(repo)
        wants = [w for w in request.get("wants", []) if is_oid(w)]
        haves = [h for h in request.get("haves", []) if is_oid(h)]
        present = set()
        if haves:
            out = repo.git(["cat-file", "--batch-check=%(objectname) %(objecttype)"],
                           input="".join(h + "\n" for h in haves).encode())
            present = {line.split()[0] for line in out.decode().splitlines() if line.endswith(" commit")}
        revs = "".join(w + "\n" for w in wants) + "".join("^" + h + "\n" for h in haves if h in present)
        self.conn.send({"ok": True, "streaming": True})
        crash_point("agent:fetch")
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(["git", "pack-objects", "--revs", "--thin", "--stdout", "-q"],
                                    cwd=repo.root, env=repo.env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors)
            proc.stdin.write(revs.encode())
            proc.stdin.close()
            self.conn.send_stream_from(proc.stdout)
            if proc.wait() != 0:
                errors.seek(0)
                raise AgentError("pack-failed", "pack-objects failed: " + errors.read().decode("utf-8", "replace")[:2000])
        return {"ok": True}

    def op_files(self, request):
        """Send the named worktree files, each checked against the oid the host expects."""
        repo = Repo(request["path"])
        if repo.exists:
            self._recover(repo)
        algo = repo.algo()
        try:
            wanted = overlay_mod.entries_of(request.get("files", {}))
        except (AttributeError, ValueError):
            raise AgentError("bad-request", "files: a map of paths to [mode, oid]") from None
        self.conn.send({"ok": True, "streaming": True})
        crash_point("agent:files")
        self.conn.send_stream(tarstream.file_stream(repo.root, wanted, algo))
        return {"ok": True}

    def op_exec(self, request):
        """Run `argv` in `cwd` (default: home; relative to home); stream its output as D frames
        whose first byte is 1 (stdout) or 2 (stderr); reply with its exit code. No stdin."""
        argv = request.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise AgentError("bad-request", "exec needs a non-empty argv of strings")
        home = os.path.expanduser("~")
        cwd = os.path.join(home, os.path.expanduser(request.get("cwd") or "~"))
        if not os.path.isdir(cwd):
            raise AgentError("no-dir", "no directory %s in the VM" % cwd)
        extra = request.get("env") or {}
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                                  and "=" not in k and "\0" not in k + v for k, v in extra.items()):
            raise AgentError("bad-request", "exec env must map variable names to strings")
        enclosing = _enclosing_repo(cwd)
        stuck = None
        if enclosing is not None and transaction.interrupted(enclosing):
            try:
                self._recover(enclosing)    # (no lock file is made in repositories that are not ours)
            except AgentError as exc:
                if exc.code != "push-stuck":
                    raise
                stuck = exc                 # exec is the way in to fix what blocks it: run anyway
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=dict(os.environ, **extra) if extra else None)
        except FileNotFoundError:
            raise AgentError("not-found", "command not found in the VM: %s" % argv[0]) from None
        except PermissionError:
            raise AgentError("not-found", "permission denied in the VM: %s" % argv[0]) from None
        if stuck is not None:
            self.conn.write_frame(b"D", b"\x02git-slicer: %s\n" % str(stuck).encode("utf-8", "replace"))
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, b"\x01")
            selector.register(proc.stderr, selectors.EVENT_READ, b"\x02")
            while selector.get_map():
                for key, _ in selector.select():
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    self.conn.write_frame(b"D", key.data + data)
                    self.conn.flush()
        code = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        return {"ok": True, "exit": code if code >= 0 else 128 - code}

    # -- push helpers --------------------------------------------------------
    @staticmethod
    def _recover(repo: Repo) -> None:
        """Finish an interrupted push before anything reads the repository."""
        with transaction.hold(repo):
            transaction.recover(repo)

    @staticmethod
    def _new_info_file(repo: Repo, request, key: str, name: str, header: str):
        """The `.git/info/NAME` a push asks for with the lines of `request[key]`, if it differs
        from the VM's (else None; an absent file counts as one with no lines)."""
        lines = request.get(key)
        if not (isinstance(lines, list) and all(isinstance(x, str) and "\n" not in x for x in lines)):
            return None
        text = "".join(x + "\n" for x in [header] + lines).encode("utf-8", "surrogateescape")
        try:
            with open(os.path.join(repo.root, ".git", "info", name), "rb") as fh:
                return None if fh.read() == text else text
        except OSError:
            return text if lines or name == "exclude" else None

    def _config_plan(self, repo: Repo, request) -> dict:
        """What a push's settings change in the VM: the excludes and attributes files' new text
        (None: as they are), the config keys to set (value None: unset), and whether any of it
        changes what git ignores or how it compares files ("rules")."""
        # The host's core.excludesFile and info/exclude patterns (never a host path), so git in
        # the VM ignores what the host's git ignores; its info/attributes, so git converts and
        # compares files there as it does here: both statuses agree.
        plan = {"excludes": self._new_info_file(repo, request, "excludes", "exclude", _EXCLUDES_HEADER),
                "attributes": self._new_info_file(repo, request, "attributes", "attributes", _ATTRIBUTES_HEADER),
                "wanted": _wanted_config(request), "updates": []}
        known = _CONFIGURED.get(repo.root)
        if not (known and known[0] == _config_identity(repo.root)
                and all(known[1].get(k) == v for k, v in plan["wanted"].items())):
            pattern = r"^(user\.(name|email)|remote\..*\.url|core\.(autocrlf|eol|filemode))$"
            current = {}
            for item in repo.git(["config", "-z", "--local", "--get-regexp", pattern], check=False).split(b"\0"):
                key, _, value = item.partition(b"\n")
                if key:
                    current[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            plan["updates"] = [(key, value, key in current) for key, value in sorted(plan["wanted"].items())
                               if current.get(key) != value]
        plan["rules"] = plan["excludes"] is not None or plan["attributes"] is not None or \
            any(key in overlay_mod.CHECKOUT_KEYS for key, _, _ in plan["updates"])
        return plan

    def _configure(self, repo: Repo, plan: dict) -> bool:
        """Make the settings of `_config_plan` so; True if what git ignores or how it compares
        files in the VM changed."""
        for name, text in (("exclude", plan["excludes"]), ("attributes", plan["attributes"])):
            if text is not None:
                write_atomic(os.path.join(repo.root, ".git", "info", name), text, mode=0o644, durable=False)
        wanted = plan["wanted"]
        for key, value, present in plan["updates"]:
            if value is None:
                if present:
                    repo.git(["config", "--local", "--unset-all", key])
                continue
            if key.startswith("remote."):
                name = key[len("remote."):-len(".url")]
                try:
                    repo.git(["remote", "set-url" if present else "add", name, value])
                except AgentError:
                    # The VM has that remote's section without a url (a fetch line of its own):
                    # `remote add` refuses it, the url alone is what is missing.
                    repo.git(["config", key, value])
            else:
                repo.git(["config", key, value])
        identity = _config_identity(repo.root)
        if identity is not None and time.time_ns() - identity[4] >= _SETTLED_NS:
            _CONFIGURED[repo.root] = (identity, wanted)
        else:                           # changed too recently: a change in the same tick looks the same
            _CONFIGURED.pop(repo.root, None)
        return plan["rules"]

    def _receive_pack(self, repo: Repo) -> None:
        proc = subprocess.Popen(["git", "index-pack", "--stdin", "--fix-thin"], cwd=repo.root, env=repo.env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for chunk in self.conn.recv_stream(MAX_PUSH_BYTES):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise AgentError("index-pack", "index-pack failed: " + err.decode("utf-8", "replace")[:2000])

    @staticmethod
    def _rechecker(repo: Repo, current: dict):
        """The check a push makes after its streams came in, before it secures anything: the
        paths it is about to write (or, with None, every path) are scanned afresh and must
        still be as `current` says. A push must never overwrite a VM change: one made while the
        streams came in (minutes, for a large push), or, for a state from the warm agent's
        memory (agent/memo.py), one no event reports (a write through a writable mmap or
        through a hard link from outside the worktree)."""
        memo = memo_mod.of(repo.root)

        def recheck(touched) -> None:
            if touched is None:
                if memo is not None:
                    memo.forget()
                fresh, seen = repo.state()["overlay"], current["overlay"]
            else:
                # A path that is not there holds nothing to overwrite: only the others, and
                # those the state lists, are scanned.
                listed = set(current["overlay"]["index"]) | set(current["overlay"]["files"])
                suspects = sorted(p for p in touched if p in listed or _present(repo.root, p))
                if not suspects:
                    return
                marks = set(suspects)
                try:
                    fresh = overlay_mod.scan(repo.root, repo.git, repo.algo(), repo.excludes(), refresh_index=False,
                                             cache=overlay_mod.StatCache.load(repo.stat_cache_path()), paths=suspects)
                except overlay_mod.FileChanged:
                    fresh = None                # written to this very moment: changed

                seen = {part: {p: e for p, e in entries.items() if memo_mod.under(p, marks)}
                        for part, entries in current["overlay"].items()}
            if fresh != seen:
                if memo is not None:
                    memo.forget()
                raise AgentError("vm-changed", "the VM repository changed since it was inspected; retry")
        return recheck

    @staticmethod
    def _head_moved(repo: Repo, current: dict) -> bool:
        """Whether HEAD or its branch moved since `current` was read: the VM's git does not take
        the agent lock, and the push's update-ref would leave a commit made while the streams
        came in to the reflog alone. (A HEAD that is neither a branch nor a commit is not read.)"""
        head = memo_mod.read_head(repo.root, _Branches(repo.root, repo.env).result())
        return head is not None and head != (current["head"], current["branch"])

    def _take_ids(self, repo: Repo, new_overlay: dict, pending: list) -> None:
        """The blob ids of the push's pending files, which the host sends after the streams
        (it hashed them while it sent them): they replace the placeholders before anything is
        checked against them. The host may abandon the push here instead."""
        message = self.conn.recv()
        if "abort" in message:
            raise AgentError("aborted", "the host abandoned the push: %s" % display(str(message["abort"]))[:500])
        ids = message.get("ids")
        length = 64 if repo.algo() == "sha256" else 40
        if not isinstance(ids, dict) or set(ids) != set(pending) \
                or not all(is_oid(oid) and len(oid) == length for oid in ids.values()):
            raise AgentError("bad-request", "after the streams: the ids of exactly the pending files")
        for path in pending:
            new_overlay["files"][path] = overlay_mod.Entry(new_overlay["files"][path].mode, ids[path])

    def _verify_members(self, repo: Repo, members: dict, new_overlay: dict) -> None:
        """End-to-end check: every file's bytes hash to the blob id the host announced (hashed
        as they were staged, from the bytes written)."""
        algo = repo.algo()
        for path, member in members.items():
            want = new_overlay["files"].get(path)
            if member.kind == "dir" or want is None:
                continue
            if member.kind == "symlink":
                got = overlay_mod.blob_oid(os.fsencode(member.target), algo)
            else:
                got = member.oid or _hash_file(member.staged, algo)
            if got != want.oid:
                raise AgentError("corrupt", "file %s arrived with different content than announced" % path)


_GOOD_BRANCH_NAMES = set()       # git said so already: a warm agent asks once per name (~2 ms)


def _branch_name_ok(branch: str, env: dict) -> bool:
    if branch in _GOOD_BRANCH_NAMES:
        return True
    if subprocess.run(["git", "check-ref-format", "refs/heads/" + branch], env=env).returncode != 0:
        return False
    if len(_GOOD_BRANCH_NAMES) < 1000:
        _GOOD_BRANCH_NAMES.add(branch)
    return True


def _pending_paths(request, new_overlay: dict) -> list:
    """A push's `pending` files: regular files of its overlay, sent in its file stream, whose
    ids come after the streams (`_take_ids`)."""
    pending = request.get("pending") or []
    if not isinstance(pending, list) or len(set(map(str, pending))) != len(pending) or (pending and not request.get("tar")):
        raise AgentError("bad-request", "pending: a list of the overlay's files the file stream sends")
    for path in pending:
        entry = new_overlay["files"].get(path) if isinstance(path, str) else None
        if entry is None or entry.mode == overlay_mod.MODE_LINK:
            raise AgentError("bad-request", "pending: a list of the overlay's files the file stream sends")
    return pending


def _add_kept(repo, reply: dict) -> None:
    """A state reply names the VM's work an interrupted push's recovery kept (agent/kept.py)."""
    still = kept_mod.listed(repo)
    if still:
        reply["kept"] = still


def _yield_to(nice) -> None:
    """Run this connection's work, and the git it starts, at the host command's niceness (a
    background push yields to the user's foreground work in the VM too). Linux keeps niceness
    per thread, so a warm agent's other connections are untouched; elsewhere it would be the
    whole process, so nothing changes there. Niceness only ever goes up."""
    if not isinstance(nice, int) or isinstance(nice, bool) or not 0 < nice <= 19 \
            or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError):
        pass


def _wanted_config(request) -> dict:
    """{config key: value} a push asks for: the host's identity, its remotes' safe URLs, and its
    checkout settings (None: unset; only from a host that sends them)."""
    wanted = {}
    for key, value in request.get("config", {}).items():
        if key in ("user.name", "user.email") and isinstance(value, str) and "\n" not in value:
            wanted[key] = value
    checkout = request.get("checkout")
    if isinstance(checkout, dict):
        for key in overlay_mod.CHECKOUT_KEYS:
            value = checkout.get(key)
            if value is None or isinstance(value, str) and "\n" not in value and len(value) < 64:
                wanted[key] = value
    for name, url in request.get("remotes", {}).items():
        if not isinstance(name, str) or not isinstance(url, str) or "\n" in name or "\n" in url \
                or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            continue
        wanted["remote.%s.url" % name] = url
    return wanted


@functools.lru_cache(maxsize=None)
def _git_version() -> str:
    """Asked once per agent process (a warm agent answers many hellos)."""
    return subprocess.run(["git", "--version"], stdout=subprocess.PIPE).stdout.decode().strip()


def _vm_identity(offered):
    """The id this VM keeps in its home (`~/.git-slicer/vm-id`), taking `offered` if it has none:
    the host compares it with the id its link remembers, so a VM that replaced another under the
    same name or address is never mistaken for it."""
    path = os.path.join(os.path.expanduser("~"), ".git-slicer", "vm-id")

    def stored():
        try:
            with open(path, encoding="ascii") as fh:
                return fh.read().strip() or None
        except (OSError, UnicodeDecodeError):
            return None
    if stored() is not None or not (isinstance(offered, str) and 0 < len(offered) <= 64 and offered.isalnum()):
        return stored()
    tmp = "%s.%d" % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(offered + "\n")
        os.link(tmp, path)              # create-only: of two racing first sessions, one id wins
    except OSError:
        pass
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return stored()


def _hash_file(path: str, algo: str) -> str:
    entry = overlay_mod.hash_worktree_file(path, algo)
    return entry.oid if entry else ""


def _enclosing_repo(path: str):
    """The repository whose worktree contains `path`, if any."""
    path = os.path.abspath(path)
    while True:
        if os.path.isdir(os.path.join(path, ".git")):
            return Repo(path)
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
