"""W5: scanning the host worktree (what every push and status does first) beside `git status`."""

from __future__ import annotations

import os

import pytest

from conftest import git

sizes = pytest.mark.parametrize("dirty", [0, 10])


def _make_dirty(worktree, dirty):
    git(worktree, "checkout", "-q", "--", ".")
    tracked = git(worktree, "ls-files", "-z").decode().split("\0")[:dirty]
    for rel in tracked:
        with open(os.path.join(worktree, rel), "ab") as fh:
            fh.write(b"\n# dirty\n")


@sizes
def test_w5_slicer_scan(benchmark, large, scratch, rounds, dirty):
    from git_slicer.repo import Worktree
    from git_slicer.scan import host_overlay
    benchmark.group = "W5 scan, %d dirty files" % dirty
    worktree = scratch.copy(large)
    _make_dirty(worktree, dirty)
    wt = Worktree(worktree)
    git(worktree, "status", "--porcelain")            # same warm index for both
    # As push scans: git may save its stat refresh in the index, like `git status` (pull and
    # status scan read-only, and after a checkout pay once more per run; see docs/performance.md).
    result = benchmark.pedantic(lambda: host_overlay(wt, refresh_index=True), rounds=rounds * 2, warmup_rounds=1)
    assert len(result["files"]) == dirty


@sizes
def test_w5_baseline_git_status(benchmark, large, scratch, rounds, dirty):
    benchmark.group = "W5 scan, %d dirty files" % dirty
    worktree = scratch.copy(large)
    _make_dirty(worktree, dirty)
    git(worktree, "status", "--porcelain")
    benchmark.pedantic(lambda: git(worktree, "status", "--porcelain"), rounds=rounds * 2, warmup_rounds=1)
