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
ATTRIBUTES = ".gitattributes"


def conversion_possible(worktree, tree_paths) -> bool:
    """False only when checkout here would write every blob exactly as it is, so the conversion
    (three git processes) has nothing to do: no eol setting, no attributes file where the
    scratch repository's git would read one (system, global, info/attributes), and no
    `.gitattributes` in the host's index or among `tree_paths` (every path by which the commit
    being written, or the entries written with it, differ from the index). Whatever it cannot
    rule out cheaply (a split, sparse or v4 index) counts as possible."""
    if any(worktree.config(key) is not None for key in _EOL_KEYS):
        return True
    for path in tree_paths:
        if path == ATTRIBUTES or path.endswith("/" + ATTRIBUTES):
            return True
    candidates = [os.path.join(d, "info", "attributes") for d in (worktree.git_dir, worktree.common_dir)]
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    candidates.append(os.path.join(config_home, "git", "attributes"))     # core.attributesFile's default
    if os.environ.get("GIT_ATTR_NOSYSTEM", "").lower() not in ("1", "true", "yes", "on"):
        candidates += [os.path.join(prefix, "gitattributes") for prefix in _system_config_dirs()]
    if any(os.path.lexists(c) for c in candidates):
        return True
    return _index_may_name_attributes(worktree)


def _system_config_dirs() -> list:
    """Where git's system gitattributes may be ($(sysconfdir): /etc for a /usr install, else
    $(prefix)/etc), found without asking git (`git var GIT_ATTR_SYSTEM` is git 2.42+)."""
    dirs = ["/etc"]
    found = shutil.which("git")
    for git in {found, os.path.realpath(found)} if found else ():
        prefix = os.path.dirname(os.path.dirname(git))
        dirs.append(os.path.join(prefix, "etc"))
    return dirs


def _index_may_name_attributes(worktree) -> bool:
    """Whether the index may hold a `.gitattributes`: index versions 2 and 3 store every path
    whole, so its absence from the file's bytes proves there is none. A v4 index (prefix-
    compressed names), a split index (entries in sharedindex.*) or a sparse one (directories
    standing for their files) could hide one."""
    if worktree.config("core.sparseCheckout") not in (None, "false") or worktree.config("index.sparse") is not None:
        return True
    try:
        if any(name.startswith("sharedindex.") for name in os.listdir(worktree.git_dir)):
            return True
        with open(os.path.join(worktree.git_dir, "index"), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return False                    # no index: nothing is tracked
    except OSError:
        return True
    if data[:4] != b"DIRC" or data[4:8] not in (b"\0\0\0\2", b"\0\0\0\3"):
        return True
    return ATTRIBUTES.encode() in data


def checkout_form(worktree, commit: str, entries: dict, dest: str, tree_paths=None) -> dict:
    """{path: file in `dest` holding the blob entries[path] (an Entry) as checkout would write
    it}. Attributes come from `commit`'s .gitattributes files (the state the pull moves to), the
    host's info/attributes and its global attributes file. {} when the conversion fails (the
    caller writes the blobs as they are), or when `tree_paths` (the paths by which `commit`
    differs from the host's index) are given and no conversion is possible (conversion_possible)."""
    if not entries:
        return {}
    if tree_paths is not None and not conversion_possible(worktree, set(tree_paths) | set(entries)):
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
