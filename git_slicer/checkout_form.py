"""Blobs in the form `git checkout` writes them on this host, without running anything.

A blob is what `git add` stores; the worktree may hold other bytes: line endings converted by
core.autocrlf, core.eol and the text/eol attributes, `ident`, working-tree-encoding. A pull
writes committed files the way checkout would, so `git status` and the user's editor see the
same bytes as after a checkout. Filter drivers (clean/smudge/process, Git LFS) never run: the
conversion runs in a scratch repository whose only configuration is the host's eol settings, so
no driver is defined there, whatever `.gitattributes` (maybe the VM's) names. Git LFS files
therefore arrive as pointer files (README "Known limits").
"""

from __future__ import annotations

import os
import shutil
import tempfile

from . import report
from .errors import SlicerError
from .repo import clean_env, run_git

# Host settings that change the bytes checkout writes and run no command.
_EOL_KEYS = ("core.autocrlf", "core.eol", "core.attributesFile")


def checkout_form(worktree, commit: str, entries: dict, dest: str) -> dict:
    """{path: file in `dest` holding the blob entries[path] (an Entry) as checkout would write
    it}. Attributes come from `commit`'s .gitattributes files (the state the pull moves to), the
    host's info/attributes and its global attributes file. {} when the conversion fails (the
    caller writes the blobs as they are)."""
    if not entries:
        return {}
    scratch = tempfile.mkdtemp(prefix="checkout-", dir=dest)
    try:
        return _convert(worktree, commit, entries, scratch, dest)
    except (SlicerError, OSError) as exc:
        report.warn("line endings not converted (files written as committed): %s" % exc)
        return {}
    finally:
        shutil.rmtree(os.path.join(scratch, "git"), ignore_errors=True)


def _convert(worktree, commit, entries, scratch, dest) -> dict:
    git_dir, empty = os.path.join(scratch, "git"), os.path.join(scratch, "wt")
    for sub in ("objects/info", "refs", "info"):
        os.makedirs(os.path.join(git_dir, sub))
    os.mkdir(empty)
    with open(os.path.join(git_dir, "HEAD"), "w") as fh:
        fh.write("ref: refs/heads/scratch\n")
    with open(os.path.join(git_dir, "config"), "w") as fh:
        fh.write("[core]\n\trepositoryformatversion = %d\n\tbare = false\n" % (worktree.algo == "sha256")
                 + ("[extensions]\n\tobjectformat = sha256\n" if worktree.algo == "sha256" else ""))
    with open(os.path.join(git_dir, "objects", "info", "alternates"), "w") as fh:
        fh.write(os.path.join(worktree.common_dir, "objects") + "\n")
    host_attributes = worktree.git_path("info/attributes")
    if os.path.isfile(host_attributes) and not os.path.islink(host_attributes):
        shutil.copyfile(host_attributes, os.path.join(git_dir, "info", "attributes"))
    settings = []
    for key in _EOL_KEYS:
        value = worktree.config(key)
        if value is not None and "\n" not in value:
            settings += ["-c", "%s=%s" % (key, value)]
    # No global or system config: the host's filter drivers are not defined in here.
    env = clean_env({"GIT_DIR": git_dir, "GIT_WORK_TREE": empty, "GIT_INDEX_FILE": os.path.join(scratch, "index"),
                     "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    env.pop("GIT_CONFIG_PARAMETERS", None)
    env.pop("GIT_CONFIG_COUNT", None)
    run_git(settings + ["read-tree", commit], cwd=empty, env=env)
    lines = b"".join(os.fsencode("%s %s\t%s" % (e.mode, e.oid, p)) + b"\0" for p, e in sorted(entries.items()))
    run_git(settings + ["update-index", "-z", "--index-info"], cwd=empty, input=lines, env=env)
    out = run_git(settings + ["checkout-index", "--temp", "-z", "--stdin"], cwd=empty, env=env,
                  input=b"".join(os.fsencode(p) + b"\0" for p in sorted(entries)))
    staged = {}
    for record in out.split(b"\0"):
        if b"\t" not in record:
            continue
        temp, path = record.split(b"\t", 1)
        final = os.path.join(dest, "co-%d" % len(staged))
        os.rename(os.path.join(empty, os.fsdecode(temp)), final)
        staged[os.fsdecode(path)] = final
    return staged
