"""W1 fresh push, W2 delta push, W3 dirty overlay, W6 no-op push and `git slicer status`, each
beside its baselines."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import workloads
from conftest import git, launch_and_push, run, slicer


def _settled():
    """The end of every setup that writes files: a round starts with nothing of the setup's
    left to flush. (The local VM shares the host's file system, so a push's `syncfs` would
    otherwise write out the files the setup has just made, which a VM with a disk of its own
    never sees; the baselines flush nothing and are timed from the same state.)"""
    os.sync()


@pytest.mark.benchmark(group="W1 fresh push")
def test_w1_slicer(benchmark, small, scratch, rounds):
    def setup():
        worktree = scratch.copy(small)
        # A user's worktree has a fresh index; the copy's names every file with another inode
        # and ctime, so the first `git status` in it would hash all 60 MB again.
        git(worktree, "update-index", "-q", "--refresh")
        vm = json.loads(slicer(worktree, "vm", "launch", "--json"))["name"]
        _settled()
        return (worktree, vm), {}
    benchmark.pedantic(lambda wt, vm: slicer(wt, "push", vm), setup=setup, rounds=rounds)


@pytest.mark.benchmark(group="W1 fresh push")
def test_w1_baseline_git_clone_no_local(benchmark, small, scratch, rounds):
    def setup():
        _settled()
        return (scratch.path("clone"),), {}
    benchmark.pedantic(lambda dest: git(None, "clone", "-q", "--no-local", small, dest), setup=setup, rounds=rounds)


def _commit_one(worktree: str, n=[0]):
    n[0] += 1
    with open(os.path.join(worktree, "bench-%d.txt" % n[0]), "w") as fh:
        fh.write("change %d\n" % n[0])
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "bench %d" % n[0])
    _settled()          # (the commit rewrote the 6 MB index: a VM's own disk never flushes that)


W2 = "W2 delta push (1-file commit, 50k files)"


@pytest.mark.benchmark(group=W2)
def test_w2_slicer(benchmark, large, scratch, rounds):
    worktree = scratch.copy(large)
    launch_and_push(worktree)
    benchmark.pedantic(lambda: slicer(worktree, "push"), setup=lambda: _commit_one(worktree), rounds=rounds * 2)


@pytest.mark.benchmark(group=W2)
def test_w2_baseline_rsync(benchmark, large, scratch, rounds):
    """rsync -a of the whole tree (its .git included: the VM gets the commit too)."""
    worktree = scratch.copy(large)
    dest = scratch.path("rsync")
    run(["rsync", "-a", worktree + "/", dest + "/"])
    benchmark.pedantic(lambda: run(["rsync", "-a", "--delete", worktree + "/", dest + "/"]),
                       setup=lambda: _commit_one(worktree), rounds=rounds * 2)


@pytest.mark.benchmark(group=W2)
def test_w2_baseline_git_status_and_push_local_bare(benchmark, large, scratch, rounds):
    """What git alone needs to learn what changed and send the commit: `git status` + `git push`."""
    worktree = scratch.copy(large)
    bare = scratch.path("bare")
    git(None, "clone", "-q", "--bare", "--no-local", worktree, bare)
    git(worktree, "status", "--porcelain")

    def status_and_push():
        git(worktree, "status", "--porcelain")
        git(worktree, "push", "-q", bare, "main")
    benchmark.pedantic(status_and_push, setup=lambda: _commit_one(worktree), rounds=rounds * 2)


def _dirty(worktree: str, quick: bool) -> list:
    """10 modified, 10 new, 1 deleted, one 50 MB binary (5 MB in --quick); returns the paths."""
    tracked = git(worktree, "ls-files", "-z").decode().split("\0")[:-1]
    paths = []
    for rel in tracked[100:110]:
        with open(os.path.join(worktree, rel), "ab") as fh:
            fh.write(b"\n# modified for the benchmark\n")
        paths.append(rel)
    for i in range(10):
        rel = "new/file-%d.txt" % i
        os.makedirs(os.path.join(worktree, "new"), exist_ok=True)
        with open(os.path.join(worktree, rel), "w") as fh:
            fh.write("new file %d\n" % i * 50)
        paths.append(rel)
    os.unlink(os.path.join(worktree, tracked[200]))
    workloads.big_binary(os.path.join(worktree, "assets.bin"), (5 if quick else 50) * 1024 * 1024)
    return paths + ["assets.bin"]


def _clean(worktree: str) -> None:
    git(worktree, "checkout", "-q", "--", ".")
    git(worktree, "clean", "-fdq")


@pytest.mark.benchmark(group="W3 dirty overlay push")
def test_w3_slicer(benchmark, small, scratch, rounds, quick):
    worktree = scratch.copy(small)
    launch_and_push(worktree)

    def setup():
        _clean(worktree)
        slicer(worktree, "push")
        _dirty(worktree, quick)
        _settled()
    benchmark.pedantic(lambda: slicer(worktree, "push"), setup=setup, rounds=rounds * 2)


def _tar_copy(worktree: str, paths: list, dest: str) -> None:
    tar = subprocess.Popen(["tar", "c", "-f", "-", "--null", "-T", "-"], cwd=worktree, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    untar = subprocess.Popen(["tar", "x", "-f", "-"], cwd=dest, stdin=tar.stdout)
    tar.stdout.close()
    tar.stdin.write(b"\0".join(p.encode() for p in paths) + b"\0")
    tar.stdin.close()
    assert tar.wait() == 0 and untar.wait() == 0


def _w3_copy(benchmark, small, scratch, rounds, quick, durable: bool):
    worktree = scratch.copy(small)
    state = {}

    def setup():
        _clean(worktree)
        state["paths"] = _dirty(worktree, quick)
        state["dest"] = scratch.path("tar")
        os.makedirs(state["dest"])
        _settled()
        return (), {}

    def copy():
        _tar_copy(worktree, state["paths"], state["dest"])
        if durable:
            run(["sync", "-f", state["dest"]])
    benchmark.pedantic(copy, setup=setup, rounds=rounds * 2)


@pytest.mark.benchmark(group="W3 dirty overlay push")
def test_w3_baseline_tar(benchmark, small, scratch, rounds, quick):
    _w3_copy(benchmark, small, scratch, rounds, quick, durable=False)


@pytest.mark.benchmark(group="W3 dirty overlay push")
def test_w3_baseline_durable_tar_then_syncfs(benchmark, small, scratch, rounds, quick):
    """Reference: the same copy, then on disk as a push leaves its files (`sync -f`, the
    syncfs(2) a push's agent makes so that a VM that loses power never records a state its disk
    lacks; the local VM's file system is the host's). tar never waits for the disk."""
    _w3_copy(benchmark, small, scratch, rounds, quick, durable=True)


@pytest.mark.benchmark(group="W3 dirty overlay push")
def test_w3_baseline_rsync(benchmark, small, scratch, rounds, quick):
    worktree = scratch.copy(small)
    dest = scratch.path("rsync")

    def setup():
        _clean(worktree)
        run(["rsync", "-a", "--delete", worktree + "/", dest + "/"])
        _dirty(worktree, quick)
        _settled()
    benchmark.pedantic(lambda: run(["rsync", "-a", "--delete", worktree + "/", dest + "/"]), setup=setup,
                       rounds=rounds * 2)


def _nothing_changed(benchmark, worktree, rounds, command):
    """Time `command(worktree)` with nothing to do: twice the rounds, after one warm-up."""
    benchmark.pedantic(lambda: command(worktree), rounds=rounds * 2, warmup_rounds=1)


def _linked(worktree):
    launch_and_push(worktree)
    return worktree


@pytest.mark.benchmark(group="W6 no-op push")
def test_w6_slicer(benchmark, small, scratch, rounds):
    _nothing_changed(benchmark, _linked(scratch.copy(small)), rounds, lambda w: slicer(w, "push"))


@pytest.mark.benchmark(group="W6 no-op push")
def test_w6_baseline_git_status(benchmark, small, scratch, rounds):
    _nothing_changed(benchmark, scratch.copy(small), rounds, lambda w: git(w, "status", "--porcelain"))


@pytest.mark.benchmark(group="status, nothing changed")
def test_status_slicer(benchmark, small, scratch, rounds):
    _nothing_changed(benchmark, _linked(scratch.copy(small)), rounds, lambda w: slicer(w, "status"))


@pytest.mark.benchmark(group="status, nothing changed")
def test_status_baseline_git_status(benchmark, small, scratch, rounds):
    _nothing_changed(benchmark, scratch.copy(small), rounds, lambda w: git(w, "status", "--porcelain"))
