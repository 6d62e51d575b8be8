"""W4: pull of 1 and 20 commits made in the VM plus uncommitted edits, beside `git fetch`."""

from __future__ import annotations

import pytest

from conftest import git, launch_and_push, slicer

AGENT_WORK = ("for i in $(seq 1 %d); do echo \"agent $i\" >> agent-log.txt; "
              "sed -i \"1s/^/# agent $i\\n/\" $(git ls-files '*.py' | sed -n \"${i}p\"); "
              "git add -A; git commit -qm \"agent commit $i\"; done; "
              "echo wip >> agent-log.txt; echo scratch > agent-scratch.txt")


@pytest.mark.parametrize("commits", [1, 20])
@pytest.mark.benchmark(group="W4 pull")
def test_w4_slicer(benchmark, small, scratch, rounds, commits):
    benchmark.group = "W4 pull %d commit(s)" % commits

    def setup():
        worktree = scratch.copy(small)
        vm = launch_and_push(worktree)
        slicer(worktree, "exec", vm, "--", "sh", "-c", AGENT_WORK % commits)
        return (worktree, vm), {}
    benchmark.pedantic(lambda wt, vm: slicer(wt, "pull", vm), setup=setup, rounds=max(1, rounds - 2))


@pytest.mark.parametrize("commits", [1, 20])
@pytest.mark.benchmark(group="W4 pull")
def test_w4_baseline_git_fetch_file(benchmark, small, scratch, rounds, commits):
    benchmark.group = "W4 pull %d commit(s)" % commits

    def setup():
        worktree = scratch.copy(small)
        other = scratch.path("vmrepo")
        git(None, "clone", "-q", "--no-local", worktree, other)
        git(other, "-c", "user.name=a", "-c", "user.email=b", "commit", "-q", "--allow-empty", "-m", "x")
        subprocess_sh(other, AGENT_WORK % commits)
        return (worktree, other), {}
    benchmark.pedantic(lambda wt, other: git(wt, "fetch", "-q", "file://" + other, "main"), setup=setup,
                       rounds=max(1, rounds - 2))


def subprocess_sh(cwd, script):
    import subprocess
    subprocess.run(["sh", "-c", script], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
