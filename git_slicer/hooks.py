"""Installing, upgrading and removing the hooks that push new commits to linked VMs.

Hooks go where git looks for them: `git rev-parse --git-path hooks` (the common dir, or
core.hooksPath). Each of post-commit, post-merge and post-rewrite gets the same marked block
(`hooks/block.tmpl`), which wakes `git_slicer.autopush` (or starts it detached) when the
worktree has a link.

A hook that is already there keeps working and is restored byte-for-byte by uninstall:
  - a shell script gets the block spliced in right after its `#!` line (git-branchless style);
  - anything else (another interpreter, a binary, a symlink, a disabled hook) is moved aside to
    `<hook>.pre-slicer` and our own hook runs it with the same arguments and stdin (pre-commit style).
Our own hooks and blocks of any template version are recognised and upgraded in place.

No click here: the CLI renders what these functions return.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
import sysconfig

from . import autopush
from .config import Settings
from .errors import SlicerError
from .links import LinkStore
from .wire.files import write_atomic

HOOKS = ("post-commit", "post-merge", "post-rewrite")
TEMPLATE_VERSION = 3
BACKUP_SUFFIX = ".pre-slicer"
_START = b"## START GIT-SLICER HOOK"
_END = b"## END GIT-SLICER HOOK"
_HEADER = b"#!/bin/sh\n# git-slicer "
_BLOCK_RE = re.compile(rb"^## START GIT-SLICER HOOK[^\n]*\n(?:.*\n)*?## END GIT-SLICER HOOK[^\n]*(?:\n|\Z)", re.M)
_SHELLS = {"sh", "bash", "dash", "ash", "ksh", "mksh", "busybox"}


# -- templates -----------------------------------------------------------------------------
def template_dir() -> str:
    """Where hook templates are: the source tree (editable installs) or the wheel's shared data."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = []
    if os.path.exists(os.path.join(here, "pyproject.toml")):
        candidates.append(os.path.join(here, "hooks"))
    for base in (sysconfig.get_path("data"), sys.prefix, sys.base_prefix,
                 sysconfig.get_path("data", "posix_user" if os.name == "posix" else "nt_user")):
        if base:
            candidates.append(os.path.join(base, "share", "git-slicer", "hooks"))
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "block.tmpl")):
            return directory
    raise SlicerError("git-slicer's hook templates are missing (looked in %s)" % ", ".join(candidates),
                      hint="reinstall git-slicer")


def _template(name: str) -> bytes:
    with open(os.path.join(template_dir(), name), "rb") as fh:
        return fh.read()


def render_block(hook: str, python: str = None) -> bytes:
    python = python or sys.executable
    text = _template("block.tmpl")
    return (text.replace(b"@VERSION@", str(TEMPLATE_VERSION).encode())
            .replace(b"@HOOK@", hook.encode())
            .replace(b"@PYTHON@", shlex.quote(python).encode()))


def render_hook(hook: str, python: str = None) -> bytes:
    text = _template("hook.tmpl").replace(b"@HOOK@", hook.encode())
    return text.replace(b"@BLOCK@\n", render_block(hook, python))


# -- where hooks go ------------------------------------------------------------------------
def hooks_dir(worktree) -> str:
    return worktree.git_path("hooks")


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def hooks_path_warning(worktree, directory: str):
    """A warning when core.hooksPath sends our hooks outside this repository, or into its
    worktree (where they are files a push sends and a VM can change)."""
    configured = worktree.config("core.hooksPath")
    if not configured:
        return None
    if _inside(directory, worktree.root) and not _inside(directory, worktree.git_dir) \
            and not _inside(directory, worktree.common_dir):
        return ("core.hooksPath points into the worktree (%s): the hooks there are worktree files, which a push "
                "sends and a VM can change; pull refuses such changes unless --accept-hook-changes" % directory)
    roots = [worktree.common_dir, worktree.root]
    if os.path.basename(worktree.common_dir.rstrip(os.sep)) == ".git":
        roots.append(os.path.dirname(worktree.common_dir.rstrip(os.sep)))
    if any(_inside(directory, root) for root in roots):
        return None
    return ("core.hooksPath points outside this repository (%s): the git-slicer hooks there run for "
            "every repository that uses that directory" % directory)


# -- reading a hook ------------------------------------------------------------------------
def _read(path: str):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raise SlicerError("%s is a directory, not a hook" % path) from None


def _blocks(data: bytes):
    return list(_BLOCK_RE.finditer(data))


def _without_block(data: bytes) -> bytes:
    match = _blocks(data)[0]
    return data[:match.start()] + data[match.end():]


def _baked_python(block: bytes):
    """The interpreter a block was installed with (None if it names none)."""
    match = re.search(rb"^\s*__slicer_py=(.*)$", block, re.M)
    if not match:
        return None
    try:
        words = shlex.split(match.group(1).decode("utf-8", "surrogateescape"))
    except ValueError:
        return None
    return words[0] if len(words) == 1 else None


def _shell_script(data: bytes) -> bool:
    """A script our POSIX-sh block can run inside: `#!` naming sh, bash, dash, ksh..."""
    if not data.startswith(b"#!") or b"\n" not in data:
        return False
    words = data[2:data.index(b"\n")].decode("latin-1").strip().split()
    if not words:
        return False
    name = os.path.basename(words[0])
    if name == "env" and len(words) > 1:
        name = os.path.basename(words[1])
    return name in _SHELLS and not (name == "busybox" and words[-1] != "sh")


def inspect(directory: str, hook: str, python: str = None) -> dict:
    """What is installed as `hook` in `directory`, and whether our part of it is current."""
    path = os.path.join(directory, hook)
    backup = path + BACKUP_SUFFIX
    info = {"hook": hook, "path": path, "chained": os.path.lexists(backup), "state": "absent", "current": False}
    if os.path.islink(path):
        info["state"] = "foreign"
        return info
    data = _read(path)
    if data is None:
        return info
    starts, ends, blocks = data.count(b"\n" + _START) + data.startswith(_START), data.count(b"\n" + _END), _blocks(data)
    if starts == 0 and ends == 0:
        info["state"] = "foreign"
    elif starts != 1 or ends != 1 or len(blocks) != 1:
        info["state"] = "damaged"
    else:
        baked = _baked_python(blocks[0].group(0))
        info["python"] = baked
        python = python or baked or sys.executable      # status: is the template current?
        if data.startswith(_HEADER):
            info["state"] = "standalone"
            info["current"] = data == render_hook(hook, python)
        else:
            info["state"] = "spliced"
            info["current"] = blocks[0].group(0) == render_block(hook, python)
    info["data"] = data
    return info


# -- writing -------------------------------------------------------------------------------
def _write(path: str, data: bytes, mode: int) -> None:
    """Replace `path` atomically with `data`, keeping `mode` (permission bits)."""
    write_atomic(path, data, stat.S_IMODE(mode))


def _mode(path: str) -> int:
    return os.stat(path).st_mode


def _plan(info: dict, force: bool):
    """(action, why) for installing over what `inspect` found; action None means refuse."""
    state = info["state"]
    if state == "absent":
        return "create", ""
    if state in ("standalone", "spliced"):
        return ("keep" if info["current"] else "upgrade"), ""
    if state == "damaged":
        return ("overwrite", "") if force else (None, "its git-slicer block is damaged (edit it by hand, or --force replaces the hook)")
    # foreign
    path = info["path"]
    data = info.get("data")
    executable = data is not None and os.access(path, os.X_OK)
    if data is not None and executable and _shell_script(data):
        return "splice", ""
    if info["chained"]:
        if force:
            return "overwrite", ""
        return None, ("%s already exists, so the hook there cannot be moved aside "
                      "(--force replaces the hook, or see --manual)" % os.path.basename(path + BACKUP_SUFFIX))
    return "chain", ""


def install(worktree, force: bool = False, python: str = None) -> dict:
    python = python or sys.executable
    directory = hooks_dir(worktree)
    os.makedirs(directory, exist_ok=True)
    infos = [inspect(directory, hook, python) for hook in HOOKS]
    plans = [_plan(info, force) for info in infos]
    refused = [(info, why) for info, (action, why) in zip(infos, plans) if action is None]
    if refused:
        info, why = refused[0]
        raise SlicerError("cannot install the %s hook: %s" % (info["hook"], why),
                          hint="`git slicer hooks install --manual` shows what to add by hand")
    done = []
    for info, (action, _) in zip(infos, plans):
        hook, path = info["hook"], info["path"]
        if action == "create" or action == "overwrite":
            _write(path, render_hook(hook, python), 0o755)
        elif action == "upgrade" and info["state"] == "standalone":
            _write(path, render_hook(hook, python), _mode(path) | 0o111)
        elif action == "upgrade":
            match = _blocks(info["data"])[0]
            data = info["data"]
            _write(path, data[:match.start()] + render_block(hook, python) + data[match.end():], _mode(path))
        elif action == "splice":
            data = info["data"]
            cut = data.index(b"\n") + 1
            _write(path, data[:cut] + render_block(hook, python) + data[cut:], _mode(path))
        elif action == "chain":
            os.rename(path, path + BACKUP_SUFFIX)
            _write(path, render_hook(hook, python), 0o755)
        done.append({"hook": hook, "path": path, "action": action, "mode": _how(inspect(directory, hook, python))})
    warning = hooks_path_warning(worktree, directory)
    return {"hooks_dir": directory, "hooks": done, "python": python, "warnings": [warning] if warning else []}


def _how(info: dict) -> str:
    if info["state"] == "standalone":
        return "chained" if info["chained"] else "standalone"
    return info["state"]


def manual(worktree, python: str = None) -> dict:
    """What to add by hand: the block for each hook, nothing written."""
    directory = hooks_dir(worktree)
    return {"hooks_dir": directory,
            "hooks": [{"hook": h, "path": os.path.join(directory, h),
                       "block": render_block(h, python).decode()} for h in HOOKS]}


def uninstall(worktree) -> dict:
    from . import autopush
    directory = hooks_dir(worktree)
    autopush.stop(worktree.git_path("slicer"))     # no hook will wake it any more
    done = []
    for hook in HOOKS:
        info = inspect(directory, hook)
        path, backup = info["path"], info["path"] + BACKUP_SUFFIX
        state, action = info["state"], "none"
        if state == "standalone":
            rest = _without_block(info["data"])
            if rest in _skeletons(hook):
                os.unlink(path)
                action = "removed"
                if os.path.lexists(backup):
                    os.rename(backup, path)
                    action = "restored"
            else:                              # someone added lines to our hook: keep theirs
                _write(path, rest, _mode(path))
                action = "unspliced"
        elif state == "spliced":
            _write(path, _without_block(info["data"]), _mode(path))
            action = "unspliced"
        elif state == "damaged":
            action = "damaged"
        done.append({"hook": hook, "path": path, "action": action})
    return {"hooks_dir": directory, "hooks": done}


def _skeletons(hook: str):
    """Our standalone hooks minus their block, for every template version (oldest first)."""
    return [_template("hook.tmpl").replace(b"@HOOK@", hook.encode()).replace(b"@BLOCK@\n", b"")]


# -- status --------------------------------------------------------------------------------
def status(worktree) -> dict:
    directory = hooks_dir(worktree)
    hooks = []
    for hook in HOOKS:
        info = inspect(directory, hook)
        python = info.get("python")
        hooks.append({"hook": hook, "path": info["path"], "installed": info["state"] in ("standalone", "spliced"),
                      "current": info["current"], "mode": _how(info), "state": info["state"], "python": python,
                      "python_missing": bool(python) and not os.access(python, os.X_OK)})
    try:
        auto = Settings(worktree.root).get("slicer.autoPush")
    except SlicerError as exc:
        auto = str(exc)
    slicer_dir = worktree.git_path("slicer")
    state = autopush.read_state(slicer_dir)
    vms = []
    for link in LinkStore.of(worktree).all():
        last = state.get("vms", {}).get(link.vm)
        if not isinstance(last, dict) or not isinstance(last.get("at"), str) or not isinstance(last.get("result"), str):
            last = None                  # our own bookkeeping, damaged: as if never written
        vms.append({"vm": link.vm, "branch": link.branch, "last": last})
    warning = hooks_path_warning(worktree, directory)
    return {"hooks_dir": directory, "hooks": hooks, "auto_push": auto, "vms": vms,
            "runner": autopush.activity(slicer_dir), "log": autopush.log_path(slicer_dir),
            "warnings": [warning] if warning else []}


def wait_idle(worktree, timeout: float = 30.0) -> bool:
    return autopush.wait_idle(worktree.git_path("slicer"), timeout)
