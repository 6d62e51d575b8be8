"""The hooks' background runner stays for slicer.autoPushIdle seconds after its last push, and a
commit's hook then only wakes it (a signal, no process start). Real `git commit`s fire real hooks
into real local VMs; the races are forced: commits while the runner leaves on idle, bursts while
it waits, a runner killed with SIGKILL, a stale autopush.running naming another live process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run
from git_slicer import autopush
from git_slicer import hooks as core
from git_slicer.repo import Worktree
from test_hooks import assert_vm_matches, last_push, log_lines, settle, slicer_dir, stop_runner


def counting_python(tmp_path) -> tuple:
    """An interpreter wrapper that counts how often a hook started the runner."""
    count = tmp_path / "runner-starts"
    wrapper = tmp_path / "bin" / "python-counting"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text("#!/bin/sh\necho start >> '%s'\nexec '%s' \"$@\"\n" % (count, sys.executable))
    wrapper.chmod(0o755)
    return str(wrapper), count


def starts(count) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def install_counting(repo, tmp_path):
    wrapper, count = counting_python(tmp_path)
    core.install(Worktree(str(repo.path)), python=wrapper)
    return count


def commit(repo, message, env=None):
    repo.write("work.txt", message + "\n")
    repo.git("add", "work.txt")
    run(["git", "commit", "-q", "-m", message], cwd=repo.path, env=env)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def waiting_runner(repo):
    found = autopush.runner(slicer_dir(repo))
    return found[0] if found and found[1] == autopush.WAIT else None


def test_later_commits_and_bursts_only_wake_the_waiting_runner(launched, tmp_path):
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    commit(repo, "first")
    assert_vm_matches(repo, vm)
    assert starts(count) == 1
    pid = waiting_runner(repo)
    assert pid, "no runner waits after the push"
    status = repo.slicer_json("hooks", "status")["runner"]
    assert status == {"state": "idle", "pid": None, "waiting": pid}
    assert "runner pid %d waits for the next commit" % pid in repo.slicer("hooks", "status").stdout.decode()

    for i in range(3):                                   # one at a time
        commit(repo, "single %d" % i)
        assert_vm_matches(repo, vm)
    for i in range(30):                                  # a scripted burst
        commit(repo, "burst %d" % i)
    repo.git("commit", "-q", "--amend", "-m", "burst 29, amended")     # post-commit + post-rewrite
    assert_vm_matches(repo, vm)
    assert starts(count) == 1, "a hook started a process although a runner was waiting"
    assert waiting_runner(repo) == pid
    assert last_push(repo, vm)["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert last_push(repo, vm)["hook"] in ("post-commit", "post-rewrite")
    pushes = log_lines(repo, ": ok: ")
    assert len(pushes) <= 20 and all("[%d]" % pid in line for line in pushes)


def test_runner_leaves_after_its_idle_time(launched, tmp_path):
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    repo.git("config", "slicer.autoPushIdle", "1")
    commit(repo, "first")
    assert_vm_matches(repo, vm)
    wait_for(lambda: autopush.runner(slicer_dir(repo)) is None, what="the runner to leave on idle")
    assert not os.path.exists(os.path.join(slicer_dir(repo), "autopush.running"))
    assert repo.slicer_json("hooks", "status")["runner"] == {"state": "idle", "pid": None, "waiting": None}
    commit(repo, "second")                               # a fresh runner takes it
    assert_vm_matches(repo, vm)
    assert starts(count) == 2
    repo.git("config", "slicer.autoPushIdle", "0")       # 0: leave right after the push
    commit(repo, "third")
    wait_for(lambda: autopush.runner(slicer_dir(repo)) is None, what="the runner to leave on idle")
    assert_vm_matches(repo, vm)


@pytest.mark.parametrize("phase", ["autopush:leaving", "autopush:left"])
def test_commit_while_the_runner_leaves_on_idle(launched, tmp_path, phase):
    """leaving: autopush.running still names the runner (the hook signals a runner past its wait);
    left: it is gone but the lock is held (the hook starts a runner that loses the lock). Either
    way the leaving runner must see the trigger and push it."""
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    repo.git("config", "slicer.autoPushIdle", "1")
    commit(repo, "first", env={**os.environ, "GIT_SLICER_TEST_PAUSE_AT": phase})
    assert_vm_matches(repo, vm)
    wait_for(lambda: waiting_runner(repo), what="the runner to wait")
    time.sleep(1 + autopush.PAUSE / 3)                   # its idle time is over: inside the pause
    commit(repo, "while it leaves")
    settle(repo)
    assert repo.vm_git(vm, "log", "-1", "--format=%s").strip() == "while it leaves"
    assert_vm_matches(repo, vm)
    assert starts(count) == (1 if phase == "autopush:leaving" else 2)


def test_runner_killed_with_sigkill(launched, tmp_path):
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    commit(repo, "first")
    assert_vm_matches(repo, vm)
    pid = waiting_runner(repo)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: autopush.runner(slicer_dir(repo)) is None, what="the killed runner to be gone")
    assert os.path.exists(os.path.join(slicer_dir(repo), "autopush.running"))      # stale, left behind
    stale_marker = os.path.join(slicer_dir(repo), autopush.MARKER + str(pid))
    assert os.path.exists(stale_marker)
    assert repo.slicer_json("hooks", "status")["runner"]["state"] == "idle"
    commit(repo, "after the kill")
    assert_vm_matches(repo, vm)
    assert starts(count) == 2 and waiting_runner(repo) not in (None, pid)
    assert not os.path.exists(stale_marker), "the next runner removes what a killed one left"


def test_stale_runner_file_naming_another_live_process(launched, tmp_path):
    """The runner died and its pid now belongs to another process (here: a `sleep`, which SIGUSR1
    would kill): its marker is not what that process holds open, and the start time in
    autopush.running does not match, so nothing is signalled."""
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    repo.git("config", "slicer.autoPushIdle", "0")
    other = subprocess.Popen(["sleep", "60"])
    try:
        real = autopush.start_time(other.pid)[0]
        with open(os.path.join(slicer_dir(repo), "autopush.running"), "w") as fh:
            fh.write("%d %d wait\n" % (other.pid, int(real) - 1))     # the dead runner's start time
        with open(os.path.join(slicer_dir(repo), autopush.MARKER + str(other.pid)), "w"):
            pass
        assert autopush.runner(slicer_dir(repo)) is None
        assert repo.slicer_json("hooks", "status")["runner"]["state"] != "running"
        commit(repo, "with a stale runner file")
        assert_vm_matches(repo, vm)
        assert starts(count) == 1
        assert other.poll() is None, "the hook signalled a process that is not our runner"
    finally:
        other.kill()
        other.wait()


def test_runner_that_is_pushing_when_the_next_commit_comes(launched, tmp_path):
    """A commit while a push runs (autopush.running says busy) is pushed after it, by the same
    runner; hooks status says running meanwhile."""
    repo, vm = launched
    count = install_counting(repo, tmp_path)
    repo.write("big.bin", os.urandom(32 << 20))         # a push that takes a moment
    commit(repo, "first")
    wait_for(lambda: autopush.activity(slicer_dir(repo))["state"] == "running",
             what="the push to start")
    commit(repo, "during the push")
    settle(repo)
    assert repo.vm_git(vm, "log", "-1", "--format=%s").strip() == "during the push"
    assert_vm_matches(repo, vm)
    assert starts(count) == 1
    stop_runner(repo)
    assert autopush.runner(slicer_dir(repo)) is None
