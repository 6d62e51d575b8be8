"""The background half of the hooks: push the worktree to its linked VMs, coalescing triggers.

The hook (shell) creates `<git-path slicer>/autopush.pending`; unless autopush.running names a
live runner (which will see `pending` when it finishes), it starts
`python -c '...autopush.main()' HOOK GITDIR` detached (the worktree kept off sys.path), with
output appended to autopush.log. Here, before anything heavy is imported:

    take autopush.lock (flock, non-blocking) - held: another runner will see `pending`; exit
    loop: write autopush.running (our pid), take `pending` and wait for the burst to settle
          (SETTLE), push to every linked VM, release, and go round again if `pending` came back

so a burst of commits ends in one or a few pushes whose final state is the last commit.
Each result (ok / refused / failed / skipped) goes to the log and to autopush.json, which
`git slicer hooks status` shows. Nothing here ever raises into the user's git command.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .wire.files import utc_now, write_atomic   # os and time only: cheap on the hooks' path

PENDING = "autopush.pending"
LOCK = "autopush.lock"
RUNNING = "autopush.running"
LOG = "autopush.log"
STATE = "autopush.json"
LOG_LIMIT = 1024 * 1024
SETTLE = 0.2          # seconds without a new trigger before pushing
SETTLE_MAX = 2.0      # but push at least this often during a long burst


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



def activity(slicer_dir: str) -> dict:
    """What the background runner is doing: running (pid), pending (a trigger not yet taken), idle."""
    pid = None
    try:
        with open(os.path.join(slicer_dir, RUNNING)) as fh:
            pid = int(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        pass
    from .locks import pid_alive        # lazy, like every import here: the hooks' path (see above)
    if pid and pid_alive(pid):
        return {"state": "running", "pid": pid}
    if os.path.exists(os.path.join(slicer_dir, PENDING)):
        return {"state": "pending", "pid": None}
    return {"state": "idle", "pid": None}


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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _settle(pending: str) -> None:
    """Take the trigger, and let a burst (a scripted series of commits) finish first: wait until
    no new trigger came for SETTLE seconds, at most SETTLE_MAX, so it ends in one push or a few."""
    deadline = time.monotonic() + SETTLE_MAX
    while True:
        _unlink(pending)
        time.sleep(SETTLE)
        if not os.path.exists(pending) or time.monotonic() >= deadline:
            return


def run(hook: str, git_dir: str) -> int:
    slicer_dir = os.path.join(os.path.abspath(git_dir), "slicer")
    pending, running = os.path.join(slicer_dir, PENDING), os.path.join(slicer_dir, RUNNING)
    try:
        fd = os.open(os.path.join(slicer_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        _log(slicer_dir, "%s: cannot open the lock: %s" % (hook, exc))
        return 0
    try:
        while _try_lock(fd):
            try:
                with open(running, "w") as fh:
                    fh.write("%d\n" % os.getpid())
                _rotate(slicer_dir)
                while os.path.exists(pending):
                    _settle(pending)
                    _push_all(slicer_dir, hook)
            finally:
                _unlink(running)                 # first: from here on a new trigger starts a runner
                _unlock(fd)
            if not os.path.exists(pending):      # a trigger that came while we were releasing
                break
    finally:
        os.close(fd)
    return 0


def _push_all(slicer_dir: str, hook: str) -> None:
    # Lazy: only a runner that holds the lock and has waited for the burst pays for push's imports.
    from .errors import SlicerError, WouldLoseWork
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
