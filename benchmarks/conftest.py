"""Benchmark fixtures: a hermetic environment, cached workloads, and the installed CLI.

Run everything (a few minutes on 2 cores) and print the ratio table:
    bash scripts/bench.sh            # or: bash scripts/bench.sh --quick  (CI smoke, small data)
Each workload has a `slicer` case and one or more baselines in the same pytest-benchmark group;
benchmarks/report.py turns the JSON into ratios. Nothing here asserts speed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import workloads  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="small workloads, one round each (CI smoke)")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def rounds(quick) -> int:
    return 1 if quick else 5


@pytest.fixture(scope="session", autouse=True)
def bench_env(quick):
    """One temporary HOME for the whole run (VMs live under it); the workload cache stays."""
    home = tempfile.mkdtemp(prefix="slicer-bench-home-")
    runtime = tempfile.mkdtemp(prefix="slicer-bench-run-")      # this run's own warm host process
    cache = workloads.cache_dir()
    saved = dict(os.environ)
    os.environ.pop("GIT_SLICER_HOST_IDLE", None)
    os.environ.update({"HOME": home, "XDG_RUNTIME_DIR": runtime, "XDG_DATA_HOME": os.path.join(home, "data"),
                       "XDG_CONFIG_HOME": os.path.join(home, "config"), "GIT_SLICER_BENCH_CACHE": cache,
                       "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                       "GIT_SLICER_PROGRESS": "never", "GIT_SLICER_BENCH_SHAPE": "quick" if quick else "5k",
                       **workloads.ENV})
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        os.environ.pop(name, None)
    with open(os.path.join(home, ".gitconfig"), "w") as fh:
        fh.write("[user]\n\tname = Bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n")
    yield home
    stop_warm_host(runtime)
    os.environ.clear()
    os.environ.update(saved)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(runtime, ignore_errors=True)


def warm_host() -> None:
    """Wait until the warm host process a command started answers, so every timed round runs
    as a user's second command does (the VM's agent is warm too)."""
    import glob
    import socket
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(os.environ["XDG_RUNTIME_DIR"], "git-slicer-host", "*.sock")):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)


def stop_warm_host(runtime: str) -> None:
    import glob
    import signal
    for lock in glob.glob(os.path.join(runtime, "git-slicer-host", "*.lock")):
        try:
            with open(lock) as fh:
                os.kill(int(fh.read() or 0), signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def small(quick) -> str:
    """The 5k-file / ~60 MB workload with ~200 commits (or the quick one)."""
    return workloads.build("quick" if quick else "5k")


@pytest.fixture(scope="session")
def large(quick) -> str:
    """The 50k-file workload (the 5k one in --quick)."""
    return workloads.build("quick" if quick else "50k")


SLICER = [os.path.join(os.path.dirname(sys.executable), "git-slicer")]
if not os.path.exists(SLICER[0]):
    SLICER = [sys.executable, "-m", "git_slicer"]


def run(args, cwd=None, input=None):
    proc = subprocess.run(args, cwd=cwd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(map(str, args)), proc.stderr.decode(errors="replace")))
    return proc.stdout


def slicer(cwd, *args):
    return run(SLICER + list(args), cwd=cwd)


def git(cwd, *args, input=None):
    return run(["git", *args], cwd=cwd, input=input)


class Scratch:
    """Per-round working copies under one temp dir, removed at the end."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="slicer-bench-")
        self.n = 0

    def path(self, name: str) -> str:
        self.n += 1
        return os.path.join(self.root, "%s-%d" % (name, self.n))

    def copy(self, source: str, name: str = "wt") -> str:
        return workloads.copy(source, self.path(name))

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def scratch():
    s = Scratch()
    yield s
    s.cleanup()


def launch_and_push(worktree: str) -> str:
    import json
    vm = json.loads(slicer(worktree, "push", "--launch", "--json"))["vm"]
    warm_host()
    return vm


def vm_rm(vm: str) -> None:
    subprocess.run(SLICER + ["vm", "rm", vm], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
