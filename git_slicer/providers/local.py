"""The embedded default: a "VM" is a directory whose agent and commands run under bubblewrap.

    <vmDir>/<name>/vm.json   host-side record (name, created, sandbox mode)
    <vmDir>/<name>/home/     the VM's disk: its $HOME, the only writable place inside

    <vmDir>/<name>/etc/      the VM's own passwd, group, hosts (user `agent`, hostname NAME)
    <vmDir>/<name>/egress.log   connections through the VM's egress proxy (`vm log`)

The host never reads or writes home/ itself: everything goes through the agent or `exec`,
exactly as with a real VM. Inside: no network, no host repository, read-only /usr. A VM with an
egress allowlist (`vm launch --allow`, `vm allow`) reaches the listed hosts, and only those,
through a proxy that `exec` and `shell` start on the host for as long as they run: its unix
socket is bind-mounted into the sandbox and exposed on 127.0.0.1:EGRESS_PORT by
git_slicer/agent/forward.py (docs/egress.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager

from .. import report
from ..config import vm_dir
from ..errors import UsageError
from ..wire.files import utc_now, write_atomic
from ..transport import ProcessChannel
from . import VM, DirectoryVMs, new_vm_id
from .local_agent import WarmAgent, code_stamp, spawn_detached

GUEST_HOME = "/home/agent"
GUEST_LIB = "/opt/git-slicer"
_ETC = ("nsswitch.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
        "mime.types", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf")
GUEST_USER = "agent"
EGRESS_PORT = 3128
EGRESS_SOCKET = "/run/git-slicer/egress.sock"
NO_PROXY = "localhost,127.0.0.1,::1"


class LocalProvider(DirectoryVMs):
    name = "local"
    passes_env = True           # exec(env=...) hands variables to one command, nothing else
    supports_egress = True      # the sandbox's only way out is the filtering proxy (egress/)

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
                  details={"sandbox": record.get("sandbox", "bwrap"), "tags": record.get("tags", {}),
                           "egress": list(record.get("egress", []))})

    def launch(self, name: str = None, tags=None, avoid=(), allow=()) -> VM:
        sandbox = self._sandbox_mode()
        name = self.claim(name, avoid)
        os.mkdir(os.path.join(self._dir(name), "home"), 0o700)
        from ..egress.allowlist import merge
        record = {"name": name, "id": new_vm_id(), "provider": self.name, "created_at": utc_now(),
                  "sandbox": sandbox, "tags": dict(tags or {}), "egress": merge([], allow)}
        write_atomic(os.path.join(self._dir(name), "vm.json"), json.dumps(record, indent=1).encode())
        return self._vm(record)

    # -- egress ----------------------------------------------------------------
    def set_egress(self, name: str, rules) -> VM:
        """Replace the VM's allowlist (canonical rule texts); commands started later, and new
        connections of running ones, see the new list."""
        record = self._record(name)
        if record is None:
            self.get(name)
        record["egress"] = list(rules)
        write_atomic(os.path.join(self._dir(name), "vm.json"), json.dumps(record, indent=1).encode())
        return self._vm(record)

    def egress_log(self, name: str):
        from ..egress.log import EgressLog
        return EgressLog(os.path.join(self._dir(name), "egress.log"))

    @contextmanager
    def _egress(self, vm: VM, sandbox: str):
        """The VM's proxy socket while the block runs, or None (no allowlist, or unsandboxed)."""
        record = self._record(vm.name) or {}
        if not record.get("egress") or sandbox != "bwrap":
            if record.get("egress"):
                report.warn_once("VM %s runs unsandboxed: its egress allowlist is not enforced" % vm.name)
            yield None
            return
        from ..egress.proxy import EgressProxy

        def rules():
            # Gone, or replaced by a new VM of the same name (another id): this command's way out ends.
            current = self._record(vm.name)
            if current is None or current.get("id") != record.get("id"):
                return None
            return current.get("egress", [])
        with EgressProxy(vm.name, rules, self.egress_log(vm.name)) as proxy:
            yield proxy.path

    def _etc(self, vm_name: str) -> str:
        """The VM's own /etc/passwd, group, hostname and hosts: `id` names the VM's user, not
        whichever host account has uid 1000, and the hostname is the VM's name."""
        directory = os.path.join(self._dir(vm_name), "etc")
        files = {
            "passwd": "root:x:0:0:root:/root:/bin/sh\n%s:x:1000:1000:git-slicer VM %s:%s:/bin/sh\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" % (GUEST_USER, vm_name, GUEST_HOME),
            "group": "root:x:0:\n%s:x:1000:\nnogroup:x:65534:\n" % GUEST_USER,
            "hostname": vm_name + "\n",
            "hosts": "127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n" % vm_name,
        }
        os.makedirs(directory, exist_ok=True)
        for leaf, text in files.items():
            path = os.path.join(directory, leaf)
            try:
                with open(path) as fh:
                    if fh.read() == text:
                        continue
            except FileNotFoundError:
                pass
            write_atomic(path, text.encode())
        return directory

    def remove(self, name: str) -> None:
        self.get(name)
        self.stop_agent(name)
        self.discard(name)

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

    def _command(self, vm: VM, argv, cwd: str = "", interactive: bool = False, extra_env=None,
                 egress: str = None, info_fd: int = None):
        """(argv, env, host cwd) that run `argv` inside the VM with `cwd` (a guest path).

        The environment is built from nothing: no host variable enters the VM except TERM and
        those in `extra_env` (`exec --env NAME`). With `egress` (the proxy's socket), the
        command runs behind the in-sandbox forwarder with the proxy variables set. With
        `info_fd` the sandbox outlives its parent (the warm agent) and bubblewrap writes the
        sandbox's pid to that descriptor."""
        record = self._record(vm.name)
        home = os.path.join(self._dir(vm.name), "home")
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sandbox = record.get("sandbox", "bwrap")
        if sandbox == "bwrap" and shutil.which("bwrap") is None:
            raise UsageError("VM %s was made as a bubblewrap sandbox, but bwrap is not installed" % vm.name)
        guest_home = GUEST_HOME if sandbox == "bwrap" else home
        env = {"HOME": guest_home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "GIT_CONFIG_NOSYSTEM": "1", "USER": "agent",
               "PYTHONPATH": GUEST_LIB if sandbox == "bwrap" else os.path.dirname(package),
               "PS1": "[%s] \\w \\$ " % vm.name}
        if os.environ.get("TERM"):
            env["TERM"] = os.environ["TERM"]
        if sandbox == "bwrap":
            env["LOGNAME"] = env["USER"] = GUEST_USER
        if egress:
            proxy = "http://127.0.0.1:%d" % EGRESS_PORT
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
                env[name] = proxy
            env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
            argv = [self._python(sandbox), "-S", "-m", "git_slicer.agent.forward", str(EGRESS_PORT),
                    EGRESS_SOCKET, "--"] + list(argv)
        env.update(extra_env or {})
        cwd = os.path.join(guest_home, cwd) if cwd else guest_home      # relative: to the VM's home
        if sandbox == "none":
            report.warn_once("local VMs run UNSANDBOXED: bubblewrap (bwrap) is not installed "
                             "(apt-get install bubblewrap)")
            return list(argv), env, cwd if os.path.isdir(cwd) else home
        lifetime = ["--info-fd", str(info_fd)] if info_fd is not None else ["--die-with-parent"]
        args = ["bwrap", *lifetime, "--unshare-all", "--unshare-user",
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
        etc = self._etc(vm.name)
        for leaf in ("passwd", "group", "hostname", "hosts"):
            args += ["--ro-bind", os.path.join(etc, leaf), "/etc/" + leaf]
        args += ["--hostname", vm.name]
        if egress:
            args += ["--ro-bind", egress, EGRESS_SOCKET]
        python = self._python(sandbox)
        if not python.startswith("/usr/"):
            prefix = os.path.realpath(sys.base_prefix)
            args += ["--ro-bind", prefix, prefix]
        args += ["--bind", home, GUEST_HOME, "--ro-bind", package, GUEST_LIB + "/git_slicer",
                 "--remount-ro", "/", "--chdir", cwd]
        if not interactive:
            args.append("--new-session")    # no TIOCSTI into the user's terminal
        return args + ["--"] + list(argv), env, None

    def connect(self, vm: VM):
        record = self._record(vm.name) or {}
        sandbox = record.get("sandbox", "bwrap")
        python = self._python(sandbox)
        agent = [python, "-S", "-m", "git_slicer.agent"]
        description = "the agent of VM %s" % vm.name
        idle = self.settings.get("slicer.local.agentIdle")
        if not idle:
            argv, env, cwd = self._command(vm, agent + ["--stdio"])
            if cwd:
                argv = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd] + argv
            return ProcessChannel(argv, env=env, description=description)

        def spawn(extra_argv, extra_env, pass_fds, log, info_fd):
            argv, env, cwd = self._command(vm, agent + extra_argv, info_fd=info_fd)
            env.update(extra_env)
            return spawn_detached(argv, env, cwd, pass_fds, log)
        warm = WarmAgent(self._dir(vm.name), description, idle, self.settings.get("slicer.handshakeTimeout"))
        return warm.channel(code_stamp(python, sandbox, record.get("id", "")), spawn)

    def stop_agent(self, name: str) -> bool:
        """End the VM's warm agent, if one runs (`vm rm`, `vm stop`)."""
        return WarmAgent(self._dir(name), "", 0, 0).stop()

    def stop(self, name: str) -> VM:
        """A local VM has nothing to power off: stopping ends its warm agent (the next command
        starts another)."""
        vm = self.get(name)
        self.stop_agent(name)
        return vm

    def start(self, name: str) -> VM:
        return self.get(name)

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False, env=None) -> int:
        sandbox = (self._record(vm.name) or {}).get("sandbox", "bwrap")
        with self._egress(vm, sandbox) as egress:
            # Through `sh`, so a missing command exits 127 and a non-executable one 126, as in a shell.
            full, child_env, host_cwd = self._command(vm, ["sh", "-c", 'exec "$@"', "sh"] + list(argv), cwd,
                                                      interactive, env, egress)
            return subprocess.call(full, env=child_env, cwd=host_cwd)
