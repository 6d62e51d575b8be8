"""W4: pull of one commit made in the VM, beside `git fetch` of one commit from a local repository.

Each round the other side makes one more commit (one source file edited, one log file appended)
and the host brings it home: `git slicer pull` (fast-forward, quarantine, worktree update) vs
`git fetch file://` (objects and FETCH_HEAD only). The same VM and the same clone serve every
round, as they would in an agent's loop.
"""

from __future__ import annotations

import subprocess

import pytest

from conftest import git, launch_and_push, slicer

# One commit: edit the n-th tracked .py file and append to agent-log.txt (n = the round).
ONE_COMMIT = ("n=%d; echo \"agent $n\" >> agent-log.txt; f=$(git ls-files '*.py' | sed -n \"${n}p\"); "
              "sed -i \"1s/^/# agent $n\\n/\" \"$f\"; git add -A; git commit -qm \"agent commit $n\"")


class Rounds:
    def __init__(self):
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@pytest.mark.benchmark(group="W4 pull of 1 VM commit")
def test_w4_slicer(benchmark, small, scratch, rounds):
    worktree = scratch.copy(small)
    vm = launch_and_push(worktree)
    counter = Rounds()

    def setup():
        slicer(worktree, "exec", vm, "--", "sh", "-c", ONE_COMMIT % counter.next())
    benchmark.pedantic(lambda: slicer(worktree, "pull", vm), setup=setup, rounds=rounds * 2, warmup_rounds=1)


@pytest.mark.benchmark(group="W4 pull of 1 VM commit")
def test_w4_baseline_git_fetch_file(benchmark, small, scratch, rounds):
    worktree = scratch.copy(small)
    other = scratch.path("vmrepo")
    git(None, "clone", "-q", "--no-local", worktree, other)
    counter = Rounds()

    def setup():
        subprocess.run(["sh", "-c", ONE_COMMIT % counter.next()], cwd=other, check=True, stdout=subprocess.DEVNULL)
    benchmark.pedantic(lambda: git(worktree, "fetch", "-q", "file://" + other, "main"), setup=setup,
                       rounds=rounds * 2, warmup_rounds=1)
