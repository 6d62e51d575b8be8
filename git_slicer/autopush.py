"""The background half of the hooks: push the worktree to its linked VMs, coalescing triggers,
and stay for a while (slicer.autoPushIdle) so the next commit's hook costs no fork.

The hook (shell) creates `<git-path slicer>/autopush.pending`. If a live runner is there (a
marker `autopush.pid.PID` that the process PID holds open as its descriptor MARKER_FD, which
/proc/PID/fd/MARKER_FD shows: two stat calls in the hook, no file read), the hook only wakes it
with SIGUSR1; otherwise it starts `python -c '...autopush.main()' HOOK GITDIR` detached (the
worktree kept off sys.path), with output appended to autopush.log. Here, before anything heavy
is imported:

    take autopush.lock (flock, non-blocking) - held: the holder will see `pending`; exit
    hold its marker (and remove the markers of runners that were killed)
    loop: write autopush.running (pid, start time, "busy"), take `pending` and wait for the
          burst to settle (SETTLE), push to every linked VM, again while `pending` came back;
          then mark autopush.running "wait" and sleep until a signal or a `pending` appears
          (checked every POLL seconds too), for at most slicer.autoPushIdle seconds
    leave: remove its marker and autopush.running, release the lock, and go round again if
           `pending` came back meanwhile (a hook that saw no runner started another, which lost
           the lock)

so a burst of commits ends in one or a few pushes whose final state is the last commit, and a
trigger is never lost: the hook writes `pending` before it looks for a runner, and a runner
looks for `pending` after it stopped announcing itself. A stale marker (the runner was killed,
its pid reused) is not what that pid holds open, so no other process is ever signalled.
autopush.running (`PID STARTTIME STATE`) says what the runner does, for `hooks status`, `stop`,
and the hook blocks of git-slicer before template version 3, which read it.
Each result (ok / refused / failed / skipped) goes to the log and to autopush.json, which
`git slicer hooks status` shows. Nothing here ever raises into the user's git command.
"""

import json
import os
import sys
import time

from .wire.files import utc_now, write_atomic   # os and time only: cheap on the hooks' path

PENDING = "autopush.pending"
LOCK = "autopush.lock"
RUNNING = "autopush.running"
MARKER = "autopush.pid."      # + the runner's pid; hooks/block.tmpl looks for it
MARKER_FD = 97                # the descriptor the runner holds its marker open as (block.tmpl too)
LOG = "autopush.log"
STATE = "autopush.json"
LOG_LIMIT = 1024 * 1024
SETTLE = 0.2          # seconds without a new trigger before pushing
SETTLE_MAX = 2.0      # but push at least this often during a long burst
POLL = 0.5            # a waiting runner also looks for `pending` this often (no /proc, lost signal)
BUSY, WAIT = "busy", "wait"
PAUSE = 3.0           # tests only: see _pause_point
HOOK_NAMES = ("post-commit", "post-merge", "post-rewrite")


def log_path(slicer_dir: str) -> str:
    return os.path.join(slicer_dir, LOG)


def _log(slicer_dir: str, message: str) -> None:
    try:
        with open(log_path(slicer_dir), "a") as fh:
            fh.write("%s [%d] %s\n" % (utc_now(), os.getpid(), message))
    except OSError:
        pass


def _rotate(slicer_dir: str) -> None:
    path = log_path(slicer_dir)
    try:
        if os.path.getsize(path) > LOG_LIMIT:
            os.replace(path, path + ".1")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    except OSError:
        pass


def read_state(slicer_dir: str) -> dict:
    try:
        with open(os.path.join(slicer_dir, STATE), "rb") as fh:
            state = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("vms", {}), dict):
        return {}                   # only our own bookkeeping: start it again
    return state


def _record(slicer_dir: str, vm: str, entry: dict) -> None:
    state = read_state(slicer_dir)
    state.setdefault("vms", {})[vm] = entry
    write_atomic(os.path.join(slicer_dir, STATE), json.dumps(state, indent=1, sort_keys=True).encode())



def start_time(pid: int):
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22) and whether it
    is a zombie; None when there is no such process or no /proc."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            fields = fh.read().rsplit(b") ", 1)[1].split()
        return fields[19].decode(), fields[0] in (b"Z", b"X")
    except (OSError, IndexError, ValueError):
        return None


def runner(slicer_dir: str):
    """(pid, "busy"|"wait") of the live runner autopush.running names, else None. With /proc the
    pid must also have the start time the runner wrote (a reused pid is not our runner)."""
    try:
        with open(os.path.join(slicer_dir, RUNNING)) as fh:
            words = fh.read().split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0:
        return None
    state = words[2] if len(words) > 2 else BUSY
    if os.path.exists("/proc/self/stat"):
        started = start_time(pid)
        if started is None or started[1] or (len(words) > 1 and words[1] != started[0]):
            return None
        return pid, state
    from .locks import pid_alive        # lazy, like every import here: the hooks' path (see above)
    return (pid, state) if pid_alive(pid) else None


def activity(slicer_dir: str) -> dict:
    """What the background runner is doing: running (a push, pid), pending (a trigger not yet
    taken), idle; `waiting` is the pid of a runner that waits for the next trigger, if any."""
    found = runner(slicer_dir)
    waiting = found[0] if found and found[1] == WAIT else None
    if found and not waiting:
        return {"state": "running", "pid": found[0], "waiting": None}
    if os.path.exists(os.path.join(slicer_dir, PENDING)):
        return {"state": "pending", "pid": None, "waiting": waiting}
    return {"state": "idle", "pid": None, "waiting": waiting}


def stop(slicer_dir: str) -> bool:
    """Ask a waiting runner to leave now (SIGTERM; a push in progress finishes first)."""
    found = runner(slicer_dir)
    if not found:
        return False
    import signal
    try:
        os.kill(found[0], signal.SIGTERM)
    except OSError:
        return False
    return True


def wait_idle(slicer_dir: str, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Wait until no push is running or pending; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if activity(slicer_dir)["state"] == "idle":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _try_lock(fd: int) -> bool:
    import fcntl                        # lazy: the hooks' path
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    import fcntl                        # lazy: the hooks' path
    fcntl.flock(fd, fcntl.LOCK_UN)


def _hold_marker(slicer_dir: str) -> str:
    """Create and hold open (as MARKER_FD) this runner's marker; remove the ones runners that
    were killed left behind (the caller holds autopush.lock: no other runner is alive)."""
    mine = MARKER + str(os.getpid())
    for name in os.listdir(slicer_dir):
        if name.startswith(MARKER) and name != mine:
            _unlink(os.path.join(slicer_dir, name))
    path = os.path.join(slicer_dir, mine)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    if fd != MARKER_FD:
        os.dup2(fd, MARKER_FD, inheritable=False)
        os.close(fd)
    return path


def _drop_marker(path: str) -> None:
    _unlink(path)
    try:
        os.close(MARKER_FD)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _settle(pending: str):
    """Take the trigger, and let a burst (a scripted series of commits) finish first: wait until
    no new trigger came for SETTLE seconds, at most SETTLE_MAX, so it ends in one push or a few.
    Returns the name of the hook that wrote the last trigger (None if it named none)."""
    deadline = time.monotonic() + SETTLE_MAX
    hook = None
    while True:
        try:
            with open(pending, "rb") as fh:
                hook = fh.read(64).decode("ascii", "replace").strip() or hook
        except OSError:
            pass
        _unlink(pending)
        time.sleep(SETTLE)
        if not os.path.exists(pending) or time.monotonic() >= deadline:
            return hook if hook in HOOK_NAMES else None


class _Signals:
    """SIGUSR1 (a hook's trigger) and SIGTERM (`stop`) wake the runner through a pipe
    (signal.set_wakeup_fd), so a wait never misses one; SIGTERM also ends the wait for good."""

    def __init__(self):
        import signal
        self.stopping = False
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)     # a full pipe wakes us anyway
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, *_):
        self.stopping = True

    def wait(self, seconds: float) -> None:
        import select
        ready, _, _ = select.select([self.read_fd], [], [], max(0.0, seconds))
        try:
            while ready and os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass


def _announce(slicer_dir: str, state: str) -> None:
    """autopush.running: `PID STARTTIME STATE`, replaced whole (the hook reads it with `read`)."""
    started = start_time(os.getpid())
    write_atomic(os.path.join(slicer_dir, RUNNING),
                 b"%d %s %s\n" % (os.getpid(), started[0].encode() if started else b"-", state.encode()),
                 mode=0o644, durable=False)


def idle_seconds() -> int:
    try:
        from .config import Settings
        return Settings(".").get("slicer.autoPushIdle")
    except Exception:  # a bad value or a vanished worktree: leave right away, as before
        return 0


def _wait_for_trigger(slicer_dir: str, pending: str, signals: _Signals, seconds: float) -> bool:
    """Sleep until `pending` appears (True), or `seconds` pass, a stop, or the worktree is gone."""
    deadline = time.monotonic() + seconds
    while not signals.stopping:
        if os.path.exists(pending):
            return True
        left = deadline - time.monotonic()
        if left <= 0 or not os.path.isdir(slicer_dir):
            return False
        signals.wait(min(left, POLL))
    return False


def _serve(slicer_dir: str, hook: str, signals: _Signals) -> None:
    pending = os.path.join(slicer_dir, PENDING)
    while True:
        _announce(slicer_dir, BUSY)
        _rotate(slicer_dir)
        while os.path.exists(pending):
            hook = _settle(pending) or hook
            _push_all(slicer_dir, hook)
        idle = 0 if signals.stopping else idle_seconds()
        if idle <= 0:
            return
        _announce(slicer_dir, WAIT)
        if not _wait_for_trigger(slicer_dir, pending, signals, idle):
            return


def _pause_point(phase: str) -> None:
    """Test hook: linger PAUSE seconds here when GIT_SLICER_TEST_PAUSE_AT names this phase, so a
    test can commit exactly while the runner leaves."""
    if os.environ.get("GIT_SLICER_TEST_PAUSE_AT") == phase:
        time.sleep(PAUSE)


def run(hook: str, git_dir: str) -> int:
    slicer_dir = os.path.join(os.path.abspath(git_dir), "slicer")
    pending, running = os.path.join(slicer_dir, PENDING), os.path.join(slicer_dir, RUNNING)
    signals = _Signals()            # before our pid is announced: a hook's SIGUSR1 never kills us
    try:
        fd = os.open(os.path.join(slicer_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        _log(slicer_dir, "%s: cannot open the lock: %s" % (hook, exc))
        return 0
    try:
        while _try_lock(fd):
            marker = None
            try:
                try:
                    marker = _hold_marker(slicer_dir)
                except OSError as exc:           # hooks then start runners that lose the lock
                    _log(slicer_dir, "%s: cannot hold the runner's marker: %s" % (hook, exc))
                _serve(slicer_dir, hook, signals)
                _pause_point("autopush:leaving")
            finally:
                if marker is not None:           # first: from here on a new trigger starts a runner
                    _drop_marker(marker)
                _unlink(running)
                _pause_point("autopush:left")
                _unlock(fd)
            if not os.path.exists(pending):      # a trigger that came while we were leaving
                break
    finally:
        os.close(fd)
    return 0


def _push_all(slicer_dir: str, hook: str) -> None:
    # Lazy: only a runner that holds the lock and has waited for the burst pays for push's imports.
    from .errors import OperationInProgress, SlicerError, WouldLoseWork
    try:
        from .config import Settings
        from .links import LinkStore
        from .push import PushOptions, push
        from .repo import Worktree
        worktree = Worktree(".")
        settings = Settings(worktree.root)
        if not settings.get("slicer.autoPush"):
            _log(slicer_dir, "%s: skipped, slicer.autoPush is false" % hook)
            return
        branch = worktree.branch()
        links = LinkStore.of(worktree).all()
    except SlicerError as exc:
        _log(slicer_dir, "%s: failed: %s" % (hook, exc))
        return
    except Exception as exc:  # never a traceback in the log for an expected problem
        _log(slicer_dir, "%s: failed: internal error: %s: %s" % (hook, type(exc).__name__, exc))
        return
    for link in links:
        started = time.monotonic()
        entry = {"at": utc_now(), "hook": hook, "branch": branch, "commit": None}
        if branch is None:
            entry.update(result="skipped", message="HEAD is detached (a rebase in progress?)")
        elif link.branch and link.branch != branch:
            entry.update(result="skipped", message="on branch %s; VM %s follows %s" % (branch, link.vm, link.branch))
        else:
            try:
                result = push(worktree, PushOptions(vm=link.vm), settings).to_json()
                sent = result["sent"]
                entry.update(result="ok", commit=result["commit"], up_to_date=result["up_to_date"],
                             message="up to date" if result["up_to_date"] else "pushed %s (%d file(s), %d bytes)" % (
                                 result["commit"][:12], sent["files"], sent["pack_bytes"] + sent["file_bytes"]))
            except WouldLoseWork as exc:
                entry.update(result="refused", message=str(exc))
            except OperationInProgress as exc:    # its end commits again, and that push follows
                entry.update(result="skipped", message=str(exc))
            except SlicerError as exc:
                entry.update(result="failed", message=str(exc))
            except Exception as exc:
                entry.update(result="failed", message="internal error: %s: %s" % (type(exc).__name__, exc))
        entry["seconds"] = round(time.monotonic() - started, 3)
        _log(slicer_dir, "%s: VM %s: %s: %s" % (hook, link.vm, entry["result"], entry["message"]))
        try:
            _record(slicer_dir, link.vm, entry)
        except OSError as exc:
            _log(slicer_dir, "cannot record the result: %s" % exc)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    hook = argv[0] if argv else "manual"
    git_dir = argv[1] if len(argv) > 1 else ".git"
    try:
        os.setsid()                              # no SIGHUP/SIGINT from the user's terminal
    except OSError:
        pass
    try:
        os.nice(10)
    except OSError:
        pass
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"       # never hold index.lock while the user runs git
    try:
        return run(hook, git_dir)
    except Exception as exc:  # the user's git command must never see us fail
        _log(os.path.join(os.path.abspath(git_dir), "slicer"),
             "%s: internal error: %s: %s" % (hook, type(exc).__name__, exc))
        return 0


if __name__ == "__main__":
    sys.exit(main())
