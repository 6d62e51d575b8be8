"""The embedded default: a "VM" is a directory whose agent and commands run under bubblewrap.

    <vmDir>/<name>/vm.json   host-side record (name, created, sandbox mode)
    <vmDir>/<name>/home/     the VM's disk: its $HOME, the only writable place inside

The host never reads or writes home/ itself: everything goes through the agent or `exec`,
exactly as with a real VM. Inside: no network, no host repository, read-only /usr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from .. import report
from ..config import vm_dir
from ..errors import UsageError
from ..links import now, write_atomic
from ..transport import ProcessChannel
from . import VM, DirectoryVMs, new_vm_id

GUEST_HOME = "/home/agent"
GUEST_LIB = "/opt/git-slicer"
_ETC = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
        "alternatives", "localtime", "mime.types")


class LocalProvider(DirectoryVMs):
    name = "local"

    def __init__(self, settings):
        self.settings = settings
        self.root = vm_dir(settings)
        self.mode = settings.get("slicer.local.sandbox")
        if self.mode not in ("auto", "bwrap", "none"):
            raise UsageError("slicer.local.sandbox must be auto, bwrap or none (got %r)" % self.mode)

    # -- VM records ----------------------------------------------------------
    def _vm(self, record) -> VM:
        return VM(name=record["name"], provider=self.name, address="local:" + record["name"],
                  created_at=record.get("created_at", ""), state="ready", id=record.get("id", ""),
                  details={"sandbox": record.get("sandbox", "bwrap"), "tags": record.get("tags", {})})

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        sandbox = self._sandbox_mode()
        name = self.claim(name, avoid)
        os.mkdir(os.path.join(self._dir(name), "home"), 0o700)
        record = {"name": name, "id": new_vm_id(), "provider": self.name, "created_at": now(),
                  "sandbox": sandbox, "tags": dict(tags or {})}
        write_atomic(os.path.join(self._dir(name), "vm.json"), json.dumps(record, indent=1).encode())
        return self._vm(record)

    def remove(self, name: str) -> None:
        self.get(name)
        directory = self._dir(name)
        # Rename first so a half-removed VM never looks like a live one.
        doomed = os.path.join(self.root, ".removing-%s-%d" % (name, os.getpid()))
        os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- running things inside -------------------------------------------------
    def _sandbox_mode(self) -> str:
        have = shutil.which("bwrap") is not None
        if self.mode == "bwrap" and not have:
            raise UsageError("slicer.local.sandbox=bwrap but bubblewrap (bwrap) is not installed",
                             hint="apt-get install bubblewrap")
        if self.mode == "none" or not have:
            return "none"
        return "bwrap"

    def _python(self, sandbox: str) -> str:
        configured = self.settings.get("slicer.local.python")
        if configured:
            return configured
        if sandbox == "bwrap" and os.path.exists("/usr/bin/python3"):
            return "/usr/bin/python3"
        return os.path.realpath(sys.executable)

    def _command(self, vm: VM, argv, cwd: str = "", interactive: bool = False):
        """(argv, env) that run `argv` inside the VM with `cwd` (a guest path)."""
        record = self._record(vm.name)
        home = os.path.join(self._dir(vm.name), "home")
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sandbox = record.get("sandbox", "bwrap")
        if sandbox == "bwrap" and shutil.which("bwrap") is None:
            raise UsageError("VM %s was made as a bubblewrap sandbox, but bwrap is not installed" % vm.name)
        guest_home = GUEST_HOME if sandbox == "bwrap" else home
        env = {"HOME": guest_home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "GIT_CONFIG_NOSYSTEM": "1", "USER": "agent",
               "PYTHONPATH": GUEST_LIB if sandbox == "bwrap" else os.path.dirname(package)}
        if os.environ.get("TERM"):
            env["TERM"] = os.environ["TERM"]
        cwd = os.path.join(guest_home, cwd) if cwd else guest_home      # relative: to the VM's home
        if sandbox == "none":
            report.warn_once("local VMs run UNSANDBOXED: bubblewrap (bwrap) is not installed "
                             "(apt-get install bubblewrap)")
            return list(argv), env, cwd if os.path.isdir(cwd) else home
        args = ["bwrap", "--die-with-parent", "--unshare-all", "--unshare-user",
                "--uid", "1000", "--gid", "1000", "--cap-drop", "ALL",
                "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for link in ("bin", "lib", "lib64", "sbin"):
            target = "/" + link
            if os.path.islink(target):
                args += ["--symlink", os.readlink(target), target]
            elif os.path.isdir(target):
                args += ["--ro-bind", target, target]
        for name in _ETC:
            args += ["--ro-bind-try", "/etc/" + name, "/etc/" + name]
        python = self._python(sandbox)
        if not python.startswith("/usr/"):
            prefix = os.path.realpath(sys.base_prefix)
            args += ["--ro-bind", prefix, prefix]
        args += ["--bind", home, GUEST_HOME, "--ro-bind", package, GUEST_LIB + "/git_slicer",
                 "--remount-ro", "/", "--chdir", cwd]
        if not interactive:
            args.append("--new-session")    # no TIOCSTI into the user's terminal
        return args + ["--"] + list(argv), env, None

    def connect(self, vm: VM) -> ProcessChannel:
        record = self._record(vm.name)
        python = self._python(record.get("sandbox", "bwrap"))
        argv, env, cwd = self._command(vm, [python, "-S", "-m", "git_slicer.agent", "--stdio"])
        if cwd:
            argv = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd] + argv
        return ProcessChannel(argv, env=env, description="the agent of VM %s" % vm.name)

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False) -> int:
        # Through `sh`, so a missing command exits 127 and a non-executable one 126, as in a shell.
        full, env, host_cwd = self._command(vm, ["sh", "-c", 'exec "$@"', "sh"] + list(argv), cwd, interactive)
        return subprocess.call(full, env=env, cwd=host_cwd)
