"""Deterministic benchmark workloads built from real source: the installed Python stdlib and
site-packages. No random bytes, no two identical files, the same repository on every run of the
same machine. Built once and cached (GIT_SLICER_BENCH_CACHE, default ~/.cache/git-slicer-bench).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass

SUFFIXES = (".py", ".pyi", ".txt", ".rst", ".c", ".h", ".json", ".toml", ".cfg", ".md", ".html", ".css", ".js")
RECIPE_VERSION = "1"


@dataclass(frozen=True)
class Shape:
    name: str
    files: int
    min_size: int        # skip smaller files to reach the target volume with this many files
    commits: int


SHAPES = {
    "5k": Shape("5k", 5000, 6000, 200),
    "50k": Shape("50k", 50000, 0, 20),
    "quick": Shape("quick", 500, 2000, 20),
}

ENV = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
       "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.com",
       "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
       "GIT_CONFIG_NOSYSTEM": "1"}


def cache_dir() -> str:
    return os.environ.get("GIT_SLICER_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "git-slicer-bench")


def source_files():
    """(path, relative name) of unique real source files, in a stable order."""
    seen = set()
    roots = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]})
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "site-packages") or dirpath != root
                                 and d != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(SUFFIXES):
                    continue
                full = os.path.join(dirpath, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                with open(full, "rb") as fh:
                    data = fh.read()
                digest = hashlib.sha1(data).digest()
                if digest in seen or len(data) > 1_000_000:
                    continue
                seen.add(digest)
                yield full, data, os.path.relpath(full, os.path.dirname(root))


def _git(cwd, *args, input=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, input=input, env={**os.environ, **ENV},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build(shape_name: str) -> str:
    """Path of a cached repository (a normal worktree) of the given shape; built if missing."""
    shape = SHAPES[shape_name]
    target = os.path.join(cache_dir(), "%s-v%s" % (shape.name, RECIPE_VERSION))
    if os.path.isdir(os.path.join(target, ".git")) and os.path.exists(os.path.join(target, ".done")):
        return target
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    _git(target, "init", "-q", "-b", "main")
    _git(target, "config", "gc.auto", "0")      # no background gc racing the final `git gc`
    chosen = []
    for full, data, rel in source_files():
        if len(data) < shape.min_size:
            continue
        chosen.append((rel, data))
        if len(chosen) == shape.files:
            break
    if len(chosen) < shape.files:      # not enough real files: unique variants of the real ones
        base = list(chosen)
        i = 0
        while len(chosen) < shape.files:
            rel, data = base[i % len(base)]
            chosen.append(("variants/%d/%s" % (i // len(base), rel), b"# variant %d\n" % i + data))
            i += 1
    first = len(chosen) - (shape.commits - 1) * 0 if shape.commits <= 1 else int(len(chosen) * 0.8)
    for rel, data in chosen[:first]:
        _write(target, rel, data)
    _git(target, "add", "-A")
    _git(target, "commit", "-q", "-m", "import %d files" % first)
    rest = chosen[first:]
    per_commit = max(1, len(rest) // max(1, shape.commits - 1))
    for n in range(1, shape.commits):
        batch = rest[(n - 1) * per_commit:n * per_commit]
        for rel, data in batch:
            _write(target, rel, data)
        # Also edit an existing file, so history has modifications, not only additions.
        rel, data = chosen[(n * 7919) % first]
        _write(target, rel, data + b"\n# edit %d\n" % n)
        _git(target, "add", "-A")
        _git(target, "commit", "-q", "-m", "commit %d" % n)
    _git(target, "gc", "-q")
    open(os.path.join(target, ".done"), "w").close()
    _git(target, "update-index", "--refresh")
    return target


def _write(root: str, rel: str, data: bytes) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def copy(source: str, dest: str) -> str:
    """A private copy of a cached workload (cp -a keeps it cheap and identical)."""
    subprocess.run(["cp", "-a", source, dest], check=True)
    os.unlink(os.path.join(dest, ".done"))
    return dest


def big_binary(path: str, size: int) -> None:
    """A deterministic, incompressible-looking binary (a hash chain; no random source)."""
    block = hashlib.sha256(b"git-slicer benchmark").digest()
    with open(path, "wb") as fh:
        written = 0
        chunk = bytearray()
        while written < size:
            while len(chunk) < 1 << 20:
                block = hashlib.sha256(block).digest()
                chunk += block * 32
            piece = bytes(chunk[:min(len(chunk), size - written)])
            fh.write(piece)
            written += len(piece)
            chunk = bytearray()
