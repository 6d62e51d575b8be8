"""Hermetic test environment (after git-revise's hermetic_seal) and helpers for real repos.

Every test gets a fresh HOME, XDG dirs and global git config, fixed author/committer dates, and
no system git config. Commands run through the real console entry point in a subprocess, and
VMs are real local sandboxes with a real agent process.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRUB = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX",
         "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_SLICER_PROVIDER",
         "GIT_SLICER_VM_DIR", "GIT_SLICER_SANDBOX", "GIT_SLICER_PROGRESS", "GIT_SLICER_AUTOPUSH",
         "GIT_SLICER_AUTOPUSH_IDLE", "GIT_SLICER_HOST_IDLE", "XDG_RUNTIME_DIR")
HAVE_BWRAP = shutil.which("bwrap") is not None


@pytest.fixture(autouse=True)
def hermetic_seal(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for name in SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.com")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("GIT_EDITOR", "false")
    monkeypatch.setenv("LANG", "C.UTF-8")
    # Commands go through the warm host process, as a user's do (GIT_SLICER_SUITE_WARM_HOST=0 runs
    # each in its own process instead); each test has its own runtime directory, so no host
    # process is shared between tests.
    monkeypatch.setenv("GIT_SLICER_HOST_IDLE", "0" if os.environ.get("GIT_SLICER_SUITE_WARM_HOST") == "0" else "60")
    runtime = tmp_path_factory.mktemp("run")
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # The console script must be reachable as `git slicer` (git finds git-slicer on PATH).
    bindir = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    (home / ".gitconfig").write_text("[user]\n\tname = Test User\n\temail = test@example.com\n"
                                     "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    yield home
    stop_warm_agents(home / ".local" / "share" / "git-slicer" / "vms")
    stop_warm_hosts(runtime / "git-slicer-host")


def stop_warm_hosts(directory) -> None:
    """End the warm host processes a test started (they idle for slicer.hostIdle seconds)."""
    import signal
    for lock in directory.glob("*.lock") if directory.is_dir() else ():
        try:
            pid = int(lock.read_text() or 0)
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                if b"git_slicer.warmhost" in fh.read():
                    os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


def stop_warm_agents(vm_root) -> None:
    """The local VMs' warm agents outlive the commands that started them (for
    slicer.local.agentIdle seconds): end this test's now instead of letting them idle."""
    from git_slicer.providers.local_agent import WarmAgent
    if vm_root.is_dir():
        for directory in vm_root.iterdir():
            if (directory / "agent.json").exists():
                WarmAgent(str(directory), "", 0, 0).stop()


@pytest.fixture(autouse=True)
def no_waiting_hook_runners(tmp_path):
    """The hooks' background runner waits slicer.autoPushIdle seconds for the next commit: end the
    ones a test started in its repositories, so none outlives it."""
    yield
    import glob
    import time
    from git_slicer import autopush
    for running in glob.glob(str(tmp_path / "*" / ".git" / "slicer" / "autopush.running")) + \
            glob.glob(str(tmp_path / "*" / ".git" / "worktrees" / "*" / "slicer" / "autopush.running")):
        slicer_dir = os.path.dirname(running)
        autopush.stop(slicer_dir)
        deadline = time.monotonic() + 60
        while autopush.runner(slicer_dir) and time.monotonic() < deadline:
            time.sleep(0.05)


def run(args, cwd=None, input=None, check=True, env=None):
    proc = subprocess.run(args, cwd=cwd, input=input, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d):\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, args)), proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace")))
    return proc


def git(cwd, *args, check=True, input=None) -> str:
    return run(["git", *args], cwd=cwd, check=check, input=input).stdout.decode()


# The installed console script (never `python -m` from inside a test repository, where a
# `git_slicer/` folder pulled from a VM would shadow the package).
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "git-slicer")
SLICER = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "git_slicer"]


def slicer(cwd, *args, check=True, input=None, env=None):
    """Run `git-slicer ARGS` (the real entry point) in a subprocess."""
    return run(SLICER + list(args), cwd=cwd, check=check, input=input, env=env)


def slicer_in_pty(cwd, *args, typed: bytes = b"", seconds: float = 30):
    """`git slicer ARGS` on a real pseudo-terminal: type `typed`, read until it exits (or
    `seconds` pass); (everything it printed, its exit code)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            os.execv(sys.executable, [sys.executable, "-m", "git_slicer", *args])
        finally:
            os._exit(127)
    os.write(fd, typed)
    output = b""
    deadline = time.time() + seconds
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return output, os.waitstatus_to_exitcode(status)


def slicer_json(cwd, *args):
    return json.loads(slicer(cwd, *args, "--json").stdout)


class Repo:
    """A real git repository in a temp dir."""

    def __init__(self, path: Path):
        self.path = path

    def git(self, *args, check=True, input=None) -> str:
        return git(self.path, *args, check=check, input=input)

    def write(self, rel: str, content, mode: int = None) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)
        if mode is not None:
            target.chmod(mode)
        return target

    def commit(self, message: str = "commit", *paths) -> str:
        self.git("add", "-A", *paths)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def status(self) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all")

    def add_submodule(self, url: str, path: str) -> str:
        """`git submodule add URL PATH` (a local URL, allowed) and commit it; the new HEAD."""
        self.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", url, path)
        return self.commit("add submodule " + path)

    def slicer(self, *args, check=True, input=None, env=None):
        return slicer(self.path, *args, check=check, input=input, env=env)

    def slicer_json(self, *args):
        return slicer_json(self.path, *args)

    def vm_git(self, vm: str, *args, check=True) -> str:
        """Run git inside the VM's copy of this worktree (through `git slicer exec`)."""
        proc = slicer(self.path, "exec", vm, "--", "git", *args, check=check)
        return proc.stdout.decode()

    def vm_sh(self, vm: str, script: str, check=True) -> str:
        return slicer(self.path, "exec", vm, "--", "sh", "-c", script, check=check).stdout.decode()

    def vm_status(self, vm: str) -> str:
        return self.vm_git(vm, "status", "--porcelain", "--untracked-files=all")

    def fingerprint(self, skip=()) -> str:
        """A hash of every byte, mode and symlink under the repository, .git included.

        `skip` lists relative path prefixes to leave out (e.g. refs a pull imports by design).
        """
        digest = hashlib.sha256()
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, self.path)
                if any(rel.startswith(prefix) for prefix in skip):
                    continue
                st = os.lstat(full)
                digest.update(rel.encode("utf-8", "surrogateescape") + b"\0%o\0" % st.st_mode)
                if os.path.islink(full):
                    digest.update(os.readlink(full).encode("utf-8", "surrogateescape"))
                else:
                    with open(full, "rb") as fh:
                        digest.update(fh.read())
        return digest.hexdigest()


def new_repo(path: Path, files: dict) -> Repo:
    """A new repository at `path` (branch main) whose one commit holds `files` (path -> text)."""
    path.mkdir()
    r = Repo(path)
    r.git("init", "-q", "-b", "main")
    for rel, text in files.items():
        r.write(rel, text)
    r.commit(path.name)
    return r


@pytest.fixture
def repo(tmp_path) -> Repo:
    """A repository with two commits: a text file, an executable, a symlink and a subdirectory."""
    path = tmp_path / "project"
    path.mkdir()
    r = Repo(path)
    r.git("init", "-q", "-b", "main")
    r.write("README.md", "# project\n")
    r.write("src/app.py", "print('hello')\n")
    r.write("bin/run", "#!/bin/sh\necho run\n", mode=0o755)
    os.symlink("src/app.py", path / "app-link")
    r.commit("initial")
    r.write("src/lib.py", "VALUE = 1\n")
    r.commit("add lib")
    return r


@pytest.fixture
def launched(repo):
    """`repo` pushed into a freshly launched local VM; returns (repo, vm name)."""
    result = repo.slicer_json("push", "--launch")
    return repo, result["vm"]
