"""Locks between git-slicer processes on one worktree (a manual push, a background push from a
hook, a pull): flock(2) on files in the worktree's git metadata, released by the kernel when a
process dies, so a crash never leaves a stale lock behind.

    <git-path slicer>/worktree.flock   pull holds it exclusively (it writes the worktree);
                                       push holds it shared (it only reads the worktree)
    <git-path slicer>/vms/<vm>.flock   one operation per VM link at a time
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import ExitStack, contextmanager

from .errors import SlicerError

WAIT_SECONDS = 120


def _acquire(path: str, mode: int, what: str, wait: float):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SlicerError("another git-slicer operation is still using %s" % what,
                                  hint="wait for it to finish (see `git slicer hooks status`)") from None
            time.sleep(0.05)


@contextmanager
def hold(worktree, vm: str, exclusive_worktree: bool = False, wait: float = None):
    if wait is None:
        wait = float(os.environ.get("GIT_SLICER_LOCK_WAIT", WAIT_SECONDS))
    base = worktree.git_path("slicer")
    os.makedirs(os.path.join(base, "vms"), exist_ok=True)
    fds = []
    try:
        fds.append(_acquire(os.path.join(base, "worktree.flock"),
                            fcntl.LOCK_EX if exclusive_worktree else fcntl.LOCK_SH,
                            "this worktree", wait))
        fds.append(_acquire(os.path.join(base, "vms", vm + ".flock"), fcntl.LOCK_EX, "VM %s" % vm, wait))
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)


@contextmanager
def attempt(worktree, vm: str):
    """hold() without waiting: yields True holding both locks, or False holding none (another
    operation has one)."""
    stack = ExitStack()
    try:
        stack.enter_context(hold(worktree, vm, wait=0))
        held = True
    except SlicerError:
        held = False
    with stack:
        yield held


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
