"""What the hooks cost a `git commit`: median of 25 real commits each, without and with them.

    python3 -m pytest benchmarks/test_hooks.py --benchmark-columns=min,median,rounds

On a shared machine the medians of separate tests move with the load; each case therefore also
commits in a baseline repository before each round (paired) and puts both medians, the
baseline's name and the overhead in extra_info, which benchmarks/report.py compares.

Cases (group "git commit"), each with its paired baseline:
  no-hooks        a plain repository (unpaired: the reference)
  empty-hook      an empty `#!/bin/sh` post-commit, what git pays to start any hook at all
                  (paired with no-hooks)
  hooks-unlinked  hooks installed, worktree linked to no VM: the hook stops at a shell test
                  (paired with empty-hook)
  hooks-linked    hooks installed, worktree linked to a local VM: the hook triggers the
                  background push (which then runs alongside the following commits; the number
                  is what the user waits for) (paired with empty-hook: the issue's target)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest

pytest.importorskip("pytest_benchmark")

ROUNDS = 25


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_SLICER_")) \
                and not name.startswith("GIT_SLICER_BENCH_"):
            monkeypatch.delenv(name)
    values = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
              "XDG_DATA_HOME": str(home / ".local" / "share"), "GIT_CONFIG_NOSYSTEM": "1",
              "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
              "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
              "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    return home


def _run(cwd, *args):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _repo(tmp_path, hooks: bool, linked: bool, empty_hook: bool = False):
    """A copy of the 5k-file workload (a repository of realistic size: commit time depends on
    the index, and a hook's fixed cost only looks large next to a toy repository)."""
    import workloads
    path = tmp_path / "repo"
    path.parent.mkdir(parents=True, exist_ok=True)
    workloads.copy(workloads.build(os.environ.get("GIT_SLICER_BENCH_SHAPE", "5k")), str(path))
    (path / "f00.txt").write_text("start\n")
    _run(path, "git", "add", "f00.txt")
    _run(path, "git", "commit", "-q", "-m", "bench file")
    _run(path, "git", "status", "--porcelain")          # a refreshed index, as a user's would be
    if linked:
        _run(path, sys.executable, "-m", "git_slicer", "push", "--launch")
    if hooks:
        _run(path, sys.executable, "-m", "git_slicer", "hooks", "install")
    if empty_hook:
        hook = path / ".git" / "hooks" / "post-commit"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
    return path


def _committer(path):
    counter = iter(range(10 ** 6))

    def commit():
        n = next(counter)
        (path / "f00.txt").write_text("change %d\n" % n)
        subprocess.run(["git", "commit", "-q", "-a", "-m", "c%d" % n], cwd=path, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return commit


def _bench(benchmark, path, baseline=None, baseline_name=""):
    """Time commits in `path`; with `baseline` (another repository), time one commit there
    before each round too, so a busy machine slows both alike: extra_info has both medians."""
    commit = _committer(path)
    paired = []

    def paired_baseline():
        started = time.perf_counter()
        base_commit()
        paired.append(time.perf_counter() - started)

    if baseline is not None:
        base_commit = _committer(baseline)
    setup = paired_baseline if baseline is not None else None

    benchmark.group = "git commit"
    benchmark.pedantic(commit, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    if paired and benchmark.stats is not None:
        base = statistics.median(paired[2:] or paired)
        ours = benchmark.stats.stats.median
        rest = paired[2:] or paired
        benchmark.extra_info.update(baseline=baseline_name, baseline_median_ms=round(base * 1000, 3),
                                    baseline_min_ms=round(min(rest) * 1000, 3),
                                    baseline_max_ms=round(max(rest) * 1000, 3),
                                    median_ms=round(ours * 1000, 3), overhead=round(ours / base - 1, 3))


def _settle(path):
    from git_slicer import autopush
    slicer = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-path", "slicer"], cwd=path,
                            check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    autopush.wait_idle(slicer, 60)
    autopush.stop(slicer)          # the runner would wait slicer.autoPushIdle for the next commit


def test_commit_no_hooks(benchmark, env, tmp_path):
    _bench(benchmark, _repo(tmp_path, hooks=False, linked=False))


def test_commit_empty_hook(benchmark, env, tmp_path):
    """The floor for any hook: git starting an empty `#!/bin/sh` post-commit."""
    _bench(benchmark, _repo(tmp_path, hooks=False, linked=False, empty_hook=True),
           _repo(tmp_path / "base", hooks=False, linked=False), "no_hooks")


def test_commit_hooks_unlinked(benchmark, env, tmp_path):
    _bench(benchmark, _repo(tmp_path, hooks=True, linked=False),
           _repo(tmp_path / "base", hooks=False, linked=False, empty_hook=True), "empty_hook")


def test_commit_hooks_linked(benchmark, env, tmp_path):
    path = _repo(tmp_path, hooks=True, linked=True)
    try:
        _bench(benchmark, path, _repo(tmp_path / "base", hooks=False, linked=False, empty_hook=True), "empty_hook")
    finally:
        _settle(path)
