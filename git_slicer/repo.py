"""The host worktree: discovery, its git directories, and git subprocesses with a scrubbed env."""

from __future__ import annotations

import os
import subprocess
from functools import cached_property

from .errors import NotARepository, OperationInProgress, SlicerError

# Variables git exports into hooks and aliases; they would redirect our git calls elsewhere.
_SCRUB_PREFIXES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                   "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_PREFIX",
                   "GIT_NAMESPACE", "GIT_QUARANTINE_PATH", "GIT_REFLOG_ACTION", "GIT_EXEC_PATH",
                   "GIT_LITERAL_PATHSPECS", "GIT_GLOB_PATHSPECS", "GIT_NOGLOB_PATHSPECS",
                   "GIT_ICASE_PATHSPECS", "GIT_SHALLOW_FILE", "GIT_REPLACE_REF_BASE")


def clean_env(extra=None) -> dict:
    """os.environ without the GIT_* variables that point git at a particular repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["GIT_TERMINAL_PROMPT"] = "0"
    if extra:
        env.update(extra)
    return env


def run_git(args, cwd=None, input=None, env=None, check=True) -> bytes:
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, env=env if env is not None else clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SlicerError("git %s failed: %s" % (args[0], message[-1] if message else "exit %d" % proc.returncode))
    return proc.stdout


def _config_key(key: str) -> str:
    """git's key normalisation: section and variable lowercased, a subsection kept as written."""
    first, dot, rest = key.partition(".")
    middle, _, last = rest.rpartition(".")
    return first.lower() + dot + (middle + "." if middle else "") + last.lower()


_OPERATIONS = (
    ("rebase-merge", "a rebase", "git rebase --continue, or git rebase --abort"),
    ("rebase-apply/applying", "git am", "git am --continue, or git am --abort"),
    ("rebase-apply", "a rebase", "git rebase --continue, or git rebase --abort"),
    ("MERGE_HEAD", "a merge", "git commit, or git merge --abort"),
    ("CHERRY_PICK_HEAD", "a cherry-pick", "git cherry-pick --continue, or git cherry-pick --abort"),
    ("REVERT_HEAD", "a revert", "git revert --continue, or git revert --abort"),
)


class Worktree:
    """One git worktree on the host (main or linked), found from any path inside it."""

    def __init__(self, path: str = "."):
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise NotARepository("not a directory: %s" % path)
        proc = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--show-toplevel", "--git-dir",
             "--git-common-dir", "--show-object-format", "--git-path", "slicer", "--git-path", "info/exclude",
             "--git-path", "info/attributes"],
            cwd=path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
        if proc.returncode != 0 or len(lines) != 7:
            raise NotARepository("not inside a git worktree: %s" % path,
                                 hint="run it inside a repository, or pass the worktree's path")
        self.root, self.git_dir, self.common_dir, self.object_format, slicer_dir, exclude, attributes = lines
        self.env = clean_env({"GIT_DIR": self.git_dir, "GIT_WORK_TREE": self.root})
        # Every command asks for these (a push for info/exclude and info/attributes): no process
        # of their own.
        self._git_paths = {"slicer": slicer_dir, "info/exclude": exclude, "info/attributes": attributes}
        self._config = None         # every setting, read once (`git config --list`) on first use

    def git(self, args, input=None, check=True, env=None) -> bytes:
        run_env = self.env if env is None else {**self.env, **env}
        return run_git(args, cwd=self.root, input=input, env=run_env, check=check)

    def git_path(self, name: str) -> str:
        """`git rev-parse --git-path NAME`: per-worktree for most names, common for hooks etc.
        Asked once per name (it does not change while a command runs)."""
        if name not in self._git_paths:
            out = self.git(["rev-parse", "--path-format=absolute", "--git-path", name])
            self._git_paths[name] = out.decode("utf-8", "surrogateescape").strip()
        return self._git_paths[name]

    @property
    def name(self) -> str:
        return os.path.basename(self.root)

    @cached_property
    def pygit(self):
        import pygit2  # lazy: hooks and quick commands should not pay for it
        return pygit2.Repository(self.git_dir)

    @property
    def algo(self) -> str:
        return "sha256" if self.object_format == "sha256" else "sha1"

    def branch(self):
        """HEAD's branch, or None when it is detached. Read from HEAD itself where it names a
        branch (the files ref backend), else from git."""
        try:
            with open(os.path.join(self.git_dir, "HEAD"), "rb") as fh:
                head = fh.read(4096)
        except OSError:
            head = b""
        if head.startswith(b"ref: refs/heads/") and head.endswith(b"\n") and head.count(b"\n") == 1:
            name = head[len(b"ref: refs/heads/"):-1].decode("utf-8", "surrogateescape")
            if name and name != ".invalid" and not name.endswith("/"):     # .invalid: the reftable backend
                return name
        elif len(head) in (41, 65) and head.endswith(b"\n") and all(c in b"0123456789abcdef" for c in head[:-1]):
            return None                                                      # detached
        out = self.git(["symbolic-ref", "-q", "--short", "HEAD"], check=False).strip()
        return out.decode("utf-8", "surrogateescape") or None

    def refuse_mid_operation(self, why: str) -> None:
        """Raise while git is in the middle of a rebase, merge, cherry-pick or revert in this
        worktree (as `git status` tells, from its files in the worktree's git dir)."""
        for marker, what, how in _OPERATIONS:
            if os.path.exists(os.path.join(self.git_dir, marker)):
                raise OperationInProgress("%s is in progress in %s: %s" % (what, self.root, why),
                                          hint="finish it or abort it first (%s)" % how)

    def rev(self, name: str):
        out = self.git(["rev-parse", "-q", "--verify", name + "^{commit}"], check=False).strip()
        return out.decode() or None

    def is_ancestor(self, ancestor: str, descendant: str, env=None) -> bool:
        proc = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, descendant], cwd=self.root,
                              env={**self.env, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc.returncode == 0

    def count(self, revs) -> int:
        out = self.git(["rev-list", "--count", *revs], check=False).strip()
        return int(out or 0)

    def config(self, key: str, default=None):
        """`git config --get KEY` (the last value; default when unset or empty), all settings read
        with one `git config --list` on first use: a Worktree lives for one operation."""
        out = self.config_items().get(_config_key(key), b"").strip()
        return out.decode("utf-8", "surrogateescape") if out else default

    def config_items(self) -> dict:
        """Every setting, {normalised key: last value as bytes}, read once."""
        if self._config is None:
            self._config = {}
            for item in self.git(["config", "-z", "--list"], check=False).split(b"\0"):
                name, _, value = item.partition(b"\n")
                if name:
                    self._config[_config_key(name.decode("utf-8", "surrogateescape"))] = value
        return self._config

    def remotes(self) -> dict:
        """{remote name: its (last) url}, from the settings read once."""
        return {key[len("remote."):-len(".url")]: value.decode("utf-8", "replace")
                for key, value in self.config_items().items()
                if key.startswith("remote.") and key.endswith(".url") and len(key) > len("remote..url")}

    def config_path(self, key: str):
        """`git config --type=path --get KEY`: `~` and `~user` expanded as git expands them; None
        when unset or empty."""
        value = self.config_items().get(_config_key(key), b"").strip()
        if not value:
            return None
        if value.startswith(b"%(prefix)/"):        # git's runtime prefix: only git knows it
            value = self.git(["config", "--type=path", "--get", key], check=False).strip()
        elif value.startswith(b"~"):
            value = os.path.expanduser(value)
        return os.fsdecode(value) or None

    def worktrees(self):
        """[(path, branch or None)] for every worktree of this repository, main first."""
        out = self.git(["worktree", "list", "--porcelain", "-z"]).decode("utf-8", "surrogateescape")
        result, path, branch = [], None, None
        for field in out.split("\0"):
            if field.startswith("worktree "):
                path, branch = field[len("worktree "):], None
            elif field.startswith("branch "):
                branch = field[len("branch refs/heads/"):]
            elif field == "" and path is not None:
                result.append((path, branch))
                path = None
        return result
