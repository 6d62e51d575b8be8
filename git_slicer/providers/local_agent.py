"""The local sandbox's warm agent: one long-lived agent per VM, shared by the commands that
follow each other within `slicer.local.agentIdle` seconds (0: one agent per command).

    <vm dir>/agent.sock   listening socket, made by the host (mode 0600) and handed to the agent
                          as an inherited descriptor: its path is in a directory the VM never sees
    <vm dir>/agent.json   the running agent: pid and start time, its token, what it runs (0600)
    <vm dir>/agent.lock   flock: one command at a time starts or stops the agent
    <vm dir>/agent.log    the agent's stderr, truncated at each start, read bounded for diagnoses

A command connects and authenticates with the token. When nothing answers (the agent ended on
its idle timeout, or was killed) or it runs other code (an upgrade, another slicer.local.python),
a new one is started in its place. `vm rm` and `vm stop` end it. A command killed mid-push
leaves the agent running: it sees the connection drop, and its push journal finishes the
apply before it answers anything else (agent/transaction.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import select
import signal
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

from ..errors import AgentFailed
from ..transport import SocketChannel, why
from ..wire.paths import display

SOCKET, INFO, LOCK, LOG = "agent.sock", "agent.json", "agent.lock", "agent.log"
LOG_TAIL = 4000
_CODE_DIRS = ("agent", "wire")


def code_stamp(*facts) -> str:
    """What a running agent runs: its code (paths, sizes, mtimes) and the given facts (python,
    sandbox, VM id). A different stamp means the agent must be replaced."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256(repr(facts).encode())
    for sub in _CODE_DIRS:
        directory = os.path.join(package, sub)
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                st = os.stat(os.path.join(directory, name))
                digest.update(b"%s/%s %d %d\n" % (sub.encode(), name.encode(), st.st_size, st.st_mtime_ns))
    return digest.hexdigest()[:32]


def _start_time(pid: int):
    """The process's start time (clock ticks since boot), so a recycled pid is never signalled."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


class WarmChannel(SocketChannel):
    """A connection to the warm agent; its last words are in agent.log."""

    def __init__(self, sock, description: str, token: str, log: str):
        self.log = log
        super().__init__(sock, description, token=token)

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - min(limit, LOG_TAIL)))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def diagnose(self):
        for line in self.stderr_tail(LOG_TAIL).splitlines():
            if line.startswith("git-slicer: "):
                return display(line[len("git-slicer: "):].strip()[:300])
        return None


class WarmAgent:
    """Find, start and stop the warm agent of the local VM kept in `directory`."""

    def __init__(self, directory: str, description: str, idle: int, timeout: float):
        self.directory = directory
        self.description = description
        self.idle = idle
        self.timeout = timeout

    def _path(self, leaf: str) -> str:
        return os.path.join(self.directory, leaf)

    # -- the socket ------------------------------------------------------------
    def _socket_call(self, method, leaf: str):
        """bind/connect to <directory>/<leaf>, through /proc/self/fd when the path is longer than
        a unix socket address may be."""
        path = self._path(leaf)
        if len(path.encode()) < 100:
            return method(path)
        fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY)
        try:
            return method("/proc/self/fd/%d/%s" % (fd, leaf))
        finally:
            os.close(fd)

    def _bind_private(self):
        """A listening socket at agent.sock, mode 0600 from the start: bound in a fresh 0700
        directory, then renamed into place (no umask games: other threads of this process, e.g.
        `push --count`, make files meanwhile)."""
        staging = tempfile.mkdtemp(prefix=".agent-", dir=self.directory)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket_call(listener.bind, os.path.join(os.path.basename(staging), SOCKET))
            os.chmod(os.path.join(staging, SOCKET), 0o600)
            os.rename(os.path.join(staging, SOCKET), self._path(SOCKET))
        except BaseException:
            listener.close()
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return listener

    def _read_info(self):
        try:
            with open(self._path(INFO), "rb") as fh:
                info = json.load(fh)
            return info if isinstance(info, dict) else None
        except (OSError, ValueError):
            return None

    def _dial(self, info) -> WarmChannel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            self._socket_call(sock.connect, SOCKET)
        except OSError:
            sock.close()
            raise
        return WarmChannel(sock, self.description, info.get("token"), self._path(LOG))

    def channel(self, stamp: str, spawn) -> WarmChannel:
        """A connection to a warm agent running `stamp`. When none answers, `spawn(extra_argv,
        extra_env, pass_fds, log_fd, info_fd)` starts one and returns its Popen."""
        info = self._read_info()
        if info and info.get("stamp") == stamp:
            try:
                return self._dial(info)
            except (OSError, AgentFailed):
                pass                    # gone, or ending on its idle timeout: start another
        with self._locked():
            info = self._read_info()
            if info and info.get("stamp") == stamp:
                try:
                    return self._dial(info)
                except (OSError, AgentFailed):
                    pass
            self._stop(info)
            return self._dial(self._start(stamp, spawn))

    # -- lifecycle ---------------------------------------------------------------
    @contextmanager
    def _locked(self):
        fd = os.open(self._path(LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _start(self, stamp: str, spawn) -> dict:
        try:
            os.unlink(self._path(SOCKET))
        except FileNotFoundError:
            pass
        listener = self._bind_private()
        listener.listen(16)
        token = secrets.token_urlsafe(24)
        info_read, info_write = os.pipe()
        log = os.open(self._path(LOG), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            proc = spawn(["--listen", "fd:%d" % listener.fileno(), "--idle", str(self.idle)],
                         {"GIT_SLICER_TOKEN": token}, (listener.fileno(), info_write), log, info_write)
        except BaseException:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
            os.close(log)
            listener.close()            # the agent holds it now: when it ends, connections are refused
        pid = _sandbox_pid(info_read, proc, self.timeout)
        info = {"pid": pid, "start": _start_time(pid), "group": pid == proc.pid, "token": token,
                "stamp": stamp, "started": time.time()}
        _write_private(self._path(INFO), json.dumps(info).encode())
        return info

    def stop(self) -> bool:
        """End the warm agent now (a push in flight dies as with a crashed VM). True if one ran."""
        if not os.path.isdir(self.directory):
            return False
        with self._locked():
            return self._stop(self._read_info())

    def _stop(self, info) -> bool:
        stopped = False
        if info and isinstance(info.get("pid"), int) and info["pid"] > 1 and \
                _start_time(info["pid"]) == info.get("start") is not None:
            try:
                # The sandbox's first process: SIGKILL ends its whole pid namespace. Unsandboxed,
                # the agent leads its own process group (its git children go too).
                if info.get("group"):
                    os.killpg(info["pid"], signal.SIGKILL)
                else:
                    os.kill(info["pid"], signal.SIGKILL)
                stopped = True
            except OSError:
                pass
        for leaf in (INFO, SOCKET):
            try:
                os.unlink(self._path(leaf))
            except FileNotFoundError:
                pass
        return stopped


def _sandbox_pid(info_read: int, proc, timeout: float) -> int:
    """bubblewrap's --info-fd names the sandbox's first process; unsandboxed, it is the child."""
    data, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([info_read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(info_read, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(info_read)
    try:
        pid = json.loads(data).get("child-pid") if data else None
    except ValueError:
        pid = None
    return pid if isinstance(pid, int) and pid > 1 else proc.pid


def _write_private(path: str, data: bytes) -> None:
    temp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temp, path)


def spawn_detached(argv, env, cwd, pass_fds, log):
    """Start the agent outside the command's session (Ctrl-C on the command leaves it running),
    with `log` as its stderr."""
    try:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, pass_fds=pass_fds, start_new_session=True)
    except OSError as exc:
        raise AgentFailed("cannot start the agent: %s" % why(exc)) from None

