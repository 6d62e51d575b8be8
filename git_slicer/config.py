"""Typed settings from `git config` (slicer.*, slicer.<vm>.*), env overrides, defaults in one place.

Every key is listed in KEYS: README's config table is generated from the same facts, and a key
that is not listed here is not read anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UsageError
from .repo import clean_env, run_git
from .wire.paths import display


@dataclass(frozen=True)
class Key:
    name: str          # as written in git config, e.g. "slicer.limit.packBytes"
    kind: str          # "str" | "bool" | "int" | "path"
    default: object
    env: str = ""      # environment variable that overrides it
    help: str = ""
    choices: tuple = ()            # "str" keys: the only values accepted
    maximum: int = 1 << 53         # "int" keys: the largest value accepted
    minimum: int = 1               # "int" keys: the smallest


_MB = 1024 * 1024
_WEEK = 7 * 24 * 3600
KEYS = [
    Key("slicer.provider", "str", "local", "GIT_SLICER_PROVIDER",
        "Where VMs come from: `local` (bubblewrap sandbox), `qemu` (a real microVM), `slicer` (Slicer REST API), `ssh` (any ssh host; no --launch)."),
    Key("slicer.vmDir", "path", "", "GIT_SLICER_VM_DIR",
        "Directory of local sandbox VMs (default `$XDG_DATA_HOME/git-slicer/vms`)."),
    Key("slicer.guestPath", "str", "", "",
        "Repository path inside the VM (default `~/<worktree-name>`)."),
    Key("slicer.includeIgnored", "bool", False, "",
        "Also push gitignored files (like `--include-ignored`)."),
    Key("slicer.autoPush", "bool", True, "GIT_SLICER_AUTOPUSH",
        "Let installed hooks push new commits to linked VMs."),
    Key("slicer.autoPushIdle", "int", 45, "GIT_SLICER_AUTOPUSH_IDLE",
        "Seconds the hooks' background runner waits for the next commit after its last push, so that "
        "commit's hook only wakes it (no process start); `0` leaves at once.", minimum=0, maximum=_WEEK),
    Key("slicer.hostIdle", "int", 300, "GIT_SLICER_HOST_IDLE",
        "Seconds the warm host process (one per user) waits for the next push, pull, status, list, diff "
        "or log after its last, so the next one skips Python's start; `0` runs every command in its own "
        "process and ends a running one after its current command.", minimum=0, maximum=_WEEK),
    Key("slicer.progress", "str", "auto", "GIT_SLICER_PROGRESS",
        "Progress bars on stderr: `auto` (only on a TTY), `always`, `never`.",
        choices=("auto", "always", "never")),
    Key("slicer.local.sandbox", "str", "auto", "GIT_SLICER_SANDBOX",
        "`auto` (bubblewrap if installed, else unsandboxed with a warning), `bwrap`, `none`.",
        choices=("auto", "bwrap", "none")),
    Key("slicer.local.python", "str", "", "",
        "python3 used inside local sandboxes (default: /usr/bin/python3, else the host's)."),
    Key("slicer.local.agentIdle", "int", 300, "",
        "Seconds a local VM's agent stays running after its last command, so the next one starts warm (0: one agent per command).",
        minimum=0, maximum=_WEEK),
    Key("slicer.qemu.accel", "str", "auto", "GIT_SLICER_QEMU_ACCEL",
        "qemu VMs: `auto` (KVM if a test guest really boots under it, else TCG), `kvm`, `tcg`.",
        choices=("auto", "kvm", "tcg")),
    Key("slicer.qemu.cpus", "int", 2, "", "qemu VMs: virtual CPUs.", maximum=1024),
    Key("slicer.qemu.memory", "int", 1024 * _MB, "", "qemu VMs: memory (e.g. `1g`, `1536m`); the root fs lives in it."),
    Key("slicer.qemu.diskSize", "int", 8192 * _MB, "", "qemu VMs: size of each VM's (sparse) disk for the repository."),
    Key("slicer.qemu.imageDir", "path", "", "GIT_SLICER_IMAGE_CACHE",
        "qemu guest image cache (default `$XDG_CACHE_HOME/git-slicer/images`)."),
    Key("slicer.qemu.mirror", "str", "", "", "Debian mirror for the qemu image (default http://deb.debian.org/debian)."),
    Key("slicer.qemu.binary", "str", "qemu-system-x86_64", "", "QEMU binary of the qemu provider."),
    Key("slicer.qemu.bootTimeout", "int", 300, "", "Seconds a qemu VM may take to boot until its agent answers.", maximum=_WEEK),
    Key("slicer.sshCommand", "str", "ssh", "GIT_SLICER_SSH_COMMAND",
        "ssh command for `ssh:` addresses and the ssh provider (e.g. `ssh -F ~/.ssh/vms`)."),
    Key("slicer.sshPersist", "int", 60, "",
        "Seconds an ssh connection stays open after a command, for the next one to reuse (ControlMaster; 0: off).",
        minimum=0, maximum=_WEEK),
    Key("slicer.connectTimeout", "int", 10, "", "Seconds to wait for a VM's transport to connect.", maximum=_WEEK),
    Key("slicer.handshakeTimeout", "int", 30, "",
        "Seconds to wait, once connected, for the agent to answer (includes shipping it).", maximum=_WEEK),
    Key("slicer.url", "str", "", "SLICER_URL",
        "Slicer REST API: a unix socket path or `http://127.0.0.1:8080` (provider `slicer`)."),
    Key("slicer.tokenFile", "path", "", "SLICER_TOKEN_FILE",
        "File with the Slicer API bearer token (or set SLICER_TOKEN); not needed on a unix socket."),
    Key("slicer.hostgroup", "str", "", "SLICER_HOSTGROUP",
        "Slicer host group VMs are launched in (needed when the daemon has several; `--hostgroup`)."),
    Key("slicer.uid", "int", 1000, "", "Slicer VMs: the user id commands and the agent run as (1000: the images' `ubuntu`).",
        minimum=0, maximum=(1 << 32) - 2),
    Key("slicer.gid", "int", 1000, "", "Slicer VMs: the group id commands and the agent run as.",
        minimum=0, maximum=(1 << 32) - 2),
    Key("slicer.limit.packBytes", "int", 2048 * _MB, "", "Largest pack accepted from a VM."),
    Key("slicer.limit.objects", "int", 1_000_000, "", "Most objects in one pack from a VM."),
    Key("slicer.limit.files", "int", 100_000, "", "Most files in one file stream from a VM."),
    Key("slicer.limit.fileBytes", "int", 1024 * _MB, "", "Largest single file from a VM."),
    Key("slicer.limit.totalBytes", "int", 4096 * _MB, "", "Largest file stream from a VM."),
    Key("slicer.limit.pathBytes", "int", 4096, "", "Longest path from a VM, in bytes."),
    Key("slicer.limit.pathDepth", "int", 64, "", "Deepest path from a VM, in components."),
    Key("slicer.limit.linkBytes", "int", 4096, "", "Longest symlink target from a VM."),
    Key("slicer.limit.refs", "int", 10_000, "", "Most branches a VM may report; more is refused before any host write."),
    Key("slicer.limit.frameBytes", "int", 64 * _MB, "", "Largest control message from a VM."),
    Key("slicer.limit.treeDepth", "int", 256, "", "Deepest tree in commits from a VM."),
    Key("slicer.limit.seconds", "int", 3600, "", "Longest a single push or pull may take.", maximum=_WEEK),
]
PER_VM_KEYS = [
    Key("slicer.<vm>.address", "str", "", "", "How to reach the VM's agent (transport address)."),
    Key("slicer.<vm>.provider", "str", "", "", "Provider that owns this VM."),
    Key("slicer.<vm>.guestPath", "str", "", "", "Repository path inside this VM."),
    Key("slicer.<vm>.token", "str", "", "", "Token for the agent behind a `tcp:` (or unix/vsock) address."),
    Key("slicer.<vm>.tokenFile", "path", "", "", "File holding that token (instead of slicer.<vm>.token)."),
]
_BY_NAME = {k.name.lower(): k for k in KEYS}
RESERVED_VM_NAMES = {"limit", "local", "qemu", "backup"}   # config sections; refs/slicer/backup/


def _parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1", ""):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise UsageError("bad boolean value %r for %s" % (text, name))


def _normalise(key: str) -> str:
    """git's key normalisation: section and variable lowercased, subsection kept."""
    parts = key.split(".")
    if len(parts) < 3:
        return key.lower()
    return ".".join([parts[0].lower(), *parts[1:-1], parts[-1].lower()])


class Settings:
    """All slicer.* settings visible from `cwd`, read with one `git config` call."""

    def __init__(self, cwd: str = None, env=None):
        out = run_git(["config", "-z", "--get-regexp", r"^slicer\."], cwd=cwd,
                      env=env or clean_env(), check=False)
        self._raw = {}
        for item in out.split(b"\0"):
            if item:
                key, _, value = item.partition(b"\n")
                self._raw[_normalise(key.decode("utf-8", "replace"))] = value.decode("utf-8", "surrogateescape")

    @classmethod
    def of(cls, worktree) -> "Settings":
        """The same settings, from the worktree's own read of its config (no second `git config`)."""
        settings = cls.__new__(cls)
        settings._raw = {_normalise(k): v.decode("utf-8", "surrogateescape")
                         for k, v in worktree.config_items().items() if k.startswith("slicer.")}
        return settings

    def get(self, name: str):
        key = _BY_NAME[name.lower()]
        if key.env and key.env in os.environ:
            text = os.environ[key.env]
        else:
            text = self._raw.get(_normalise(key.name))
        if text is None:
            return key.default
        if key.kind == "bool":
            return _parse_bool(text, key.name)
        if key.kind == "int":
            try:
                value = _parse_int(text)
            except ValueError:
                raise UsageError("bad number %r for %s" % (_shown(text), key.name)) from None
            if not key.minimum <= value <= key.maximum:
                raise UsageError("%s must be between %d and %d (got %s)"
                                 % (key.name, key.minimum, key.maximum, _shown(text)))
            return value
        if key.kind == "path":
            return os.path.expanduser(text)
        if key.choices and text not in key.choices:
            raise UsageError("%s must be %s (got %r)" % (key.name, ", ".join(key.choices), _shown(text)))
        return text

    def vm(self, vm: str, var: str, default=None):
        return self._raw.get("slicer.%s.%s" % (vm, var.lower()), default)

    def vms_with_address(self) -> dict:
        found = {}
        for key, value in self._raw.items():
            if key.endswith(".address") and key.count(".") >= 2:
                found[key[len("slicer."):-len(".address")]] = value
        return found


def _shown(text: str) -> str:
    return display(text[:100])


def _parse_int(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(text[-1:], 1)
    return int(text[:-1] if scale != 1 else text) * scale


def user_data_dir() -> str:
    """`$XDG_DATA_HOME/git-slicer`: the user's own state (local VMs, VMs kept with unpulled work)."""
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "git-slicer")


def vm_dir(settings: Settings) -> str:
    configured = settings.get("slicer.vmDir")
    if configured:
        if os.path.lexists(configured) and not os.path.isdir(configured):
            raise UsageError("slicer.vmDir %s is not a directory" % _shown(configured),
                             hint="point slicer.vmDir (or GIT_SLICER_VM_DIR) at a directory")
        return configured
    return os.path.join(user_data_dir(), "vms")


def check_guest_path(text: str, key: str = "slicer.guestPath") -> str:
    """A repository path inside the VM: `~/<dir>` (in the VM user's home) or an absolute path,
    with no '.', '..' or empty components, and never the home or `/` itself (the agent would
    turn it into a repository, or work outside the home)."""
    body = text[2:] if text.startswith("~/") else text[1:] if text.startswith("/") else None
    parts = body.rstrip("/").split("/") if body is not None else []
    if body is None or not body.strip("/") or any(p in ("", ".", "..") for p in parts) or \
            any(ord(c) < 32 or c == "\x7f" for c in text):
        raise UsageError("%s must be `~/DIR` (inside the VM user's home) or an absolute path below `/`, "
                         "without '.' or '..' (got %r)" % (key, display(text[:200])))
    return text
